package devices

import "errors"

var (
	// ErrBadCredentials is returned by Authenticate for every credential
	// failure: unknown device, wrong password, disabled device, invalid id.
	// The error also matches the specific reason (ErrUnknownDevice,
	// ErrDisabled, ErrInvalidID) for logs, but adapters must answer the device
	// with one reason for all of them (MQTT "bad user name or password", CoAP
	// 4.01) so that a caller cannot probe which ids exist. Any other error
	// from Authenticate (store unreachable, context done) means "try later".
	ErrBadCredentials = errors.New("bad credentials")

	// ErrUnknownDevice means no device with that id is registered.
	ErrUnknownDevice = errors.New("unknown device")

	// ErrDisabled means the device is registered but disabled by an operator.
	ErrDisabled = errors.New("device disabled")

	// ErrExists is returned by Add for an id that is already registered.
	ErrExists = errors.New("device already exists")

	// ErrInvalidID is returned for a device id that breaks the rules of ValidID.
	ErrInvalidID = errors.New("invalid device id")

	// ErrNoCredentials is returned when a device would be stored without a
	// password, password hash or PSK, so it could never authenticate.
	ErrNoCredentials = errors.New("no password, password hash or psk given")

	// ErrNoPSK is returned by PSK for a registered device that has no
	// pre-shared key, so it cannot use CoAP over DTLS-PSK.
	ErrNoPSK = errors.New("device has no psk")

	// ErrUnsupportedHash is returned for a stored or imported password hash
	// that is neither argon2id (PHC format) nor bcrypt.
	ErrUnsupportedHash = errors.New("unsupported password hash")

	// ErrClosed is returned by a Registry used after Close.
	ErrClosed = errors.New("registry closed")
)
