package mqtt

import (
	"context"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Authenticator verifies a device's credentials. A nil Authenticator means
// open mode: every client is accepted and its device id is taken from the
// topics it publishes to.
type Authenticator interface {
	Authenticate(ctx context.Context, device, password string) error
}

// Authorizer decides which topics an authenticated device may use.
type Authorizer interface {
	CanPublish(device, topic string) bool
	CanSubscribe(device, filter string) bool
}

// StatusRecorder keeps each device's online state and last-seen time.
type StatusRecorder interface {
	SetStatus(ctx context.Context, device string, online bool, at time.Time) error
}

// authTimeout bounds one credential check so a slow registry cannot hold a
// connection slot forever.
const authTimeout = 5 * time.Second

// OnConnectAuthenticate implements the project's own authentication:
// mochi's auth ledger compares plain passwords and allows by default, so it
// is not used. In registry mode the username is the device id and the
// client id must be that same id, so no identity can take over another
// device's session.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	if h.s.auth == nil {
		return true
	}
	device := string(pk.Connect.Username)
	if device == "" || !pk.Connect.PasswordFlag {
		h.s.stats.authFailures.Add(1)
		h.s.log.Info("connection refused: no credentials", "client", cl.ID, "remote", cl.Net.Remote)
		return false
	}
	if cl.ID != device {
		h.s.stats.authFailures.Add(1)
		h.s.log.Info("connection refused: client id is not the device id", "device", device, "client", cl.ID)
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	if err := h.s.auth.Authenticate(ctx, device, string(pk.Connect.Password)); err != nil {
		h.s.stats.authFailures.Add(1)
		h.s.log.Info("connection refused", "device", device, "remote", cl.Net.Remote, "error", err)
		return false
	}
	return true
}

// OnACLCheck denies by default in registry mode.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if h.s.authz == nil || cl.Net.Inline {
		return true
	}
	device := string(cl.Properties.Username)
	if write {
		return h.s.authz.CanPublish(device, topic)
	}
	return h.s.authz.CanSubscribe(device, topic)
}
