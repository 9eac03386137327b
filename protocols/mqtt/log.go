package mqtt

import (
	"context"
	"log/slog"
)

// quietHandler raises the minimum level of mochi's own logs: it reports
// every listener attach and client disconnect at Info, which is noise next
// to the gateway's logs. Its warnings and errors still come through.
type quietHandler struct {
	slog.Handler
	min slog.Level
}

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as), h.min}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name), h.min}
}
