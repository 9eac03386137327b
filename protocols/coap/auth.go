package coap

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/iotgw/iotgw/devices"
)

// Authenticator verifies devices; devices.Registry satisfies it. A nil
// Authenticator means auth mode open: every request is accepted and its
// device is the {device} segment of its path, and DTLS has no pre-shared
// keys (certificates still work).
type Authenticator interface {
	// Authenticate checks a device's password, sent on plain UDP and TCP
	// (and DTLS/TLS without a client certificate) as the URI query
	// auth=PASSWORD. Errors matching devices.ErrBadCredentials are answered
	// 4.01; any other error means the registry could not decide, answered
	// 5.03 so the device retries.
	Authenticate(ctx context.Context, id, password string) error
	// PSK returns the device's DTLS pre-shared key; the PSK identity the
	// device sends is its device id.
	PSK(ctx context.Context, id string) ([]byte, error)
}

// StatusRecorder is implemented by an Authenticator that also keeps each
// device's online state (devices.Registry does). A device is online for
// CoAP while it observes its commands resource.
type StatusRecorder interface {
	SetStatus(ctx context.Context, id string, online bool, at time.Time) error
}

var _ Authenticator = devices.Registry(nil)

// authTimeout bounds one credential or key lookup, so that a slow registry
// holds one endpoint's requests, not the listener.
const authTimeout = 5 * time.Second

// authQuery is the URI query parameter that carries a device's password on
// transports without their own identity: coap://host/devices/d/s?auth=PW.
const authQuery = "auth="

// certIdentity is the device id a verified client certificate names: its
// subject common name, when that is a valid device id.
func certIdentity(chains [][]*x509.Certificate) string {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ""
	}
	cn := chains[0][0].Subject.CommonName
	if devices.ValidID(cn) != nil {
		return ""
	}
	return cn
}
