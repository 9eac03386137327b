package coap

import "errors"

var (
	// ErrNotStarted is returned by Addr for a listener that Start has not
	// bound (or that is off).
	ErrNotStarted = errors.New("coap listener not started")

	// ErrClosed is returned by Start and Deliver after Close.
	ErrClosed = errors.New("coap server closed")

	// ErrCommandTooLarge is returned by Deliver for a command that does not
	// fit one CoAP notification (1152 bytes on UDP and DTLS; Block2 is not
	// used for notifications).
	ErrCommandTooLarge = errors.New("command too large for one coap notification")

	// ErrNoAck is returned by Deliver when a device answered a confirmable
	// notification with Reset or not at all after every retransmission. It
	// wraps gateway.ErrNotConnected: the device's observation is removed,
	// and the caller should keep the command for a later registration.
	ErrNoAck = errors.New("device did not acknowledge the notification")
)
