package mqtt

import (
	"errors"

	"github.com/mochi-mqtt/server/v2/packets"
)

var (
	// ErrNotStarted is returned by Addr before Start bound the listener.
	ErrNotStarted = errors.New("mqtt server not started")

	// ErrListenerOff is returned by the address getters of a listener the
	// options turned off.
	ErrListenerOff = errors.New("mqtt listener off")

	// ErrCommandRejected is returned by Deliver when the device answered the
	// command's PUBLISH with an MQTT 5 PUBACK reason code of 0x80 or more.
	// The command reached the device; sending it again will not help.
	ErrCommandRejected = errors.New("command rejected by device")

	// ErrCommandExpired is returned by Deliver for a command whose Expires
	// time has passed; it is not sent.
	ErrCommandExpired = errors.New("command expired")
)

// errRejectPacket is packets.ErrRejectPacket boxed once: the OnPublish hook
// returns it for every publish (it writes the ack itself), and returning
// the Code struct as an error boxed it each time.
var errRejectPacket error = packets.ErrRejectPacket
