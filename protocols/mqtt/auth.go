package mqtt

import (
	"context"
	"errors"
	"slices"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
)

// Authenticator verifies a device's credentials. A nil Authenticator means
// open mode: every client is accepted and its device id is taken from the
// topics it publishes to.
//
// Authenticate returns nil to accept, an error matching
// devices.ErrBadCredentials for wrong credentials, and any other error when
// it could not decide (the device is told "server unavailable" and
// retries). Certificate authentication needs the Authenticator to be a
// DeviceLookup as well (devices.Registry is both).
type Authenticator interface {
	Authenticate(ctx context.Context, device, password string) error
}

// DeviceLookup tells whether a device is registered and enabled. A device
// that proves its identity with a client certificate is still refused when
// the registry does not know it or an operator disabled it.
type DeviceLookup interface {
	Get(ctx context.Context, id string) (devices.Device, error)
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
// is not used.
//
// In registry mode a device proves its id with a client certificate (TLS
// listeners with mqtt.tls_client_ca_file) whose common name or a DNS
// subject alternative name is the id, or else with username = id and its
// password. Either way the client id must be that id, so no other identity
// can take over the device's session (mochi hands a session to a new
// connection with the same client id). A connection that presents a
// certificate is judged by it: its username, if any, must be one of the
// certificate's ids, and its password is not checked. A will message must
// go to a topic the device may publish to, or it could speak for another
// device when the connection drops.
//
// Refusals are answered with the MQTT 5 reason (3.1.1 return code): bad
// user name or password 0x86 (0x04), client identifier not valid 0x85
// (0x02), not authorized 0x87 (0x05), server unavailable 0x88 (0x03) when
// the registry could not answer.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	s := h.s
	if s.auth == nil {
		return true
	}
	var certIDs []string // nil: no client certificate
	if tc := tlsConn(cl.Net.Conn); tc != nil {
		certIDs = certIdentities(tc.ConnectionState())
	}
	device := string(pk.Connect.Username)
	refuse := func(code packets.Code, msg string, args ...any) bool {
		s.stats.authFailures.Add(1)
		s.log.Info("connection refused: "+msg, append([]any{"device", device, "client", cl.ID, "remote", cl.Net.Remote}, args...)...)
		s.refuse(cl, code)
		return false
	}
	switch {
	case certIDs != nil:
		if device == "" {
			device = cl.ID
		}
		if !slices.Contains(certIDs, device) {
			return refuse(packets.ErrBadUsernameOrPassword, "client certificate is not for this device", "certificate_ids", certIDs)
		}
	case device == "" || !pk.Connect.PasswordFlag:
		return refuse(packets.ErrBadUsernameOrPassword, "no credentials")
	}
	if cl.ID != device {
		return refuse(packets.ErrClientIdentifierNotValid, "client id is not the device id")
	}

	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	var err error
	if certIDs != nil {
		err = s.checkRegistered(ctx, device)
	} else {
		err = s.auth.Authenticate(ctx, device, string(pk.Connect.Password))
	}
	if errors.Is(err, devices.ErrBadCredentials) {
		return refuse(packets.ErrBadUsernameOrPassword, "bad credentials", "error", err)
	}
	if err != nil {
		return refuse(packets.ErrServerUnavailable, "registry unavailable", "error", err)
	}
	if pk.Connect.WillFlag && s.authz != nil && !s.authz.CanPublish(device, pk.Connect.WillTopic) {
		return refuse(packets.ErrNotAuthorized, "will topic not allowed", "topic", pk.Connect.WillTopic)
	}
	// From here on the device id is the identity: ACL, records, status.
	cl.Properties.Username = []byte(device)
	return true
}

// checkRegistered accepts a device that authenticated with a certificate
// only if the registry has it enabled. Its errors match
// devices.ErrBadCredentials for an unknown or disabled device.
func (s *Server) checkRegistered(ctx context.Context, device string) error {
	lookup, ok := s.auth.(DeviceLookup)
	if !ok {
		return errors.Join(devices.ErrBadCredentials, errors.New("certificate authentication needs a device registry"))
	}
	d, err := lookup.Get(ctx, device)
	switch {
	case errors.Is(err, devices.ErrUnknownDevice):
		return errors.Join(devices.ErrBadCredentials, err)
	case err != nil:
		return err
	case !d.Registered:
		return errors.Join(devices.ErrBadCredentials, devices.ErrUnknownDevice)
	case d.Disabled:
		return errors.Join(devices.ErrBadCredentials, devices.ErrDisabled)
	}
	return nil
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
