package devices

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"
)

// Device is what the registry tells about a device. It never carries a
// password, hash or key, so it is safe to print, log and serialize.
type Device struct {
	ID         string            `json:"id"`
	Registered bool              `json:"registered"`         // false for a device only seen in open mode
	Disabled   bool              `json:"disabled"`           // refused by Authenticate and PSK
	HasPSK     bool              `json:"has_psk"`            // a DTLS pre-shared key is stored
	Created    time.Time         `json:"created,omitzero"`   // when it was added
	Meta       map[string]string `json:"meta,omitempty"`     // operator's labels: fleet, model, site...
	Online     bool              `json:"online"`             // connected to a gateway, as last reported
	LastSeen   time.Time         `json:"last_seen,omitzero"` // time of the last connect or disconnect
}

// Credentials are what a device proves itself with. Password and
// PasswordHash are alternatives: a plain password is hashed with argon2id
// before it is stored; a hash (argon2id or bcrypt, see CheckHash) is stored
// as given, for fleets imported from another system. PSK is the optional
// raw DTLS pre-shared key for CoAP (16 to 64 bytes). String, GoString,
// LogValue and MarshalJSON redact everything.
type Credentials struct {
	Password     string
	PasswordHash string
	PSK          []byte
}

// MinPSKLen and MaxPSKLen bound a pre-shared key, in bytes: shorter keys
// are too weak to offer, longer ones are beyond what DTLS stacks accept.
const (
	MinPSKLen = 16
	MaxPSKLen = 64
)

func (c Credentials) String() string {
	set := func(b bool) string {
		if b {
			return "set"
		}
		return "unset"
	}
	return fmt.Sprintf("Credentials{password: %s, psk: %s}", set(c.Password != "" || c.PasswordHash != ""), set(c.PSK != nil))
}

// GoString keeps %#v from printing the fields.
func (c Credentials) GoString() string { return c.String() }

// LogValue keeps slog from printing the fields.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON keeps encoders from writing the fields.
func (c Credentials) MarshalJSON() ([]byte, error) { return []byte(`"redacted"`), nil }

// validate checks the credentials for device id before anything is stored.
func (c Credentials) validate() error {
	switch {
	case c.Password != "" && c.PasswordHash != "":
		return fmt.Errorf("give a password or a password hash, not both")
	case c.Password == "" && c.PasswordHash == "" && c.PSK == nil:
		return ErrNoCredentials
	case c.PSK != nil && (len(c.PSK) < MinPSKLen || len(c.PSK) > MaxPSKLen):
		return fmt.Errorf("psk is %d bytes, want %d to %d", len(c.PSK), MinPSKLen, MaxPSKLen)
	case c.PasswordHash != "":
		return CheckHash(c.PasswordHash)
	}
	return nil
}

// Entry is a device to store with its credentials, as Put takes it.
type Entry struct {
	Device      Device // ID, Disabled, Meta and (if not zero) Created are stored
	Credentials Credentials
}

func (e Entry) validate() error {
	if err := ValidID(e.Device.ID); err != nil {
		return err
	}
	if err := validMeta(e.Device.Meta); err != nil {
		return fmt.Errorf("device %q: %w", e.Device.ID, err)
	}
	if err := e.Credentials.validate(); err != nil {
		return fmt.Errorf("device %q: %w", e.Device.ID, err)
	}
	return nil
}

// Outcome is what Put did with one entry.
type Outcome int

const (
	Added   Outcome = iota + 1 // the device was new
	Updated                    // it existed and was replaced (replace mode)
	Skipped                    // it existed and was left alone
)

func (o Outcome) String() string {
	switch o {
	case Added:
		return "added"
	case Updated:
		return "updated"
	case Skipped:
		return "skipped"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Limits on metadata, which is stored with every device.
const (
	MaxMetaKeyLen   = 64
	MaxMetaValueLen = 1024
	MaxMetaEntries  = 64
)

// ValidMetaKey reports whether k can name a metadata field: 1 to 64 ASCII
// letters, digits, '.', '_' or '-'.
func ValidMetaKey(k string) bool {
	return ValidStream(k) && len(k) <= MaxMetaKeyLen
}

func validMeta(m map[string]string) error {
	if len(m) > MaxMetaEntries {
		return fmt.Errorf("%d metadata fields, the limit is %d", len(m), MaxMetaEntries)
	}
	for k, v := range m {
		if !ValidMetaKey(k) {
			return fmt.Errorf("metadata key %s: use 1 to %d letters, digits, '.', '_' or '-'", quoteShort(k), MaxMetaKeyLen)
		}
		if len(v) > MaxMetaValueLen || !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("metadata %q: value must be UTF-8 without NUL, at most %d bytes", k, MaxMetaValueLen)
		}
	}
	return nil
}

// ParseMeta turns key=value pairs, as given on a command line, into
// metadata.
func ParseMeta(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return nil, fmt.Errorf("metadata %s: want key=value", quoteShort(p))
		}
		m[k] = v
	}
	if err := validMeta(m); err != nil {
		return nil, err
	}
	return m, nil
}

// ParsePSK decodes a pre-shared key written in hex, the form in which
// registry files, Redis and CSV imports hold it.
func ParsePSK(s string) ([]byte, error) {
	k, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("psk: not hex")
	}
	if len(k) < MinPSKLen || len(k) > MaxPSKLen {
		return nil, fmt.Errorf("psk: %d bytes, want %d to %d (%d to %d hex digits)",
			len(k), MinPSKLen, MaxPSKLen, 2*MinPSKLen, 2*MaxPSKLen)
	}
	return k, nil
}

// GeneratePassword returns a random password with 130 bits of entropy (26
// base32 characters), for `iotgw devices add` without a password. Show it to
// the operator once: only its hash is stored.
func GeneratePassword() string { return rand.Text() }

// GeneratePSK returns a random 32-byte pre-shared key.
func GeneratePSK() []byte {
	k := make([]byte, 32)
	rand.Read(k) // never fails since Go 1.24
	return k
}
