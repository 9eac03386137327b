package mqtt

import (
	"context"
	"log/slog"
)

// quietHandler raises the minimum level of mochi's own logs: it reports
// every listener attach and client disconnect at Info, which is noise next
// to the gateway's logs. Its warnings and errors still come through, except
// the message-less warning its listeners log for every connection that
// ends before a session (refused, timed out, not MQTT): the gateway logs
// refusals itself, with the device, and a port scanner should not fill the
// log.
type quietHandler struct {
	slog.Handler
	min slog.Level
}

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" && r.Level < slog.LevelError {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as), h.min}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name), h.min}
}
