package simulator

import "errors"

var (
	// ErrInvalidOptions wraps the errors of Options.Validate and
	// VerifyOptions.Validate; the message names the option (its yaml key).
	ErrInvalidOptions = errors.New("invalid simulator option")

	// ErrConnectRefused is returned when the broker answers CONNECT with a
	// failure code (bad credentials, not authorized, server unavailable).
	// The device backs off and tries again.
	ErrConnectRefused = errors.New("connection refused by broker")

	// ErrProtocol means the peer sent bytes that are not a valid MQTT packet
	// for a client, or a packet that does not belong at that point. The
	// connection is closed and the device reconnects.
	ErrProtocol = errors.New("mqtt protocol error")

	// ErrPacketTooLarge is returned for an incoming packet longer than the
	// client reads (maxIncomingPacket).
	ErrPacketTooLarge = errors.New("mqtt packet too large")

	// ErrAckTimeout means an acknowledgement or PINGRESP did not arrive
	// within ack_timeout; the connection is taken as dead and replaced.
	ErrAckTimeout = errors.New("acknowledgement timed out")

	// ErrServerDisconnect is returned when an MQTT 5 broker sends DISCONNECT.
	ErrServerDisconnect = errors.New("disconnected by broker")

	// ErrRouteData is returned for route data that does not parse.
	ErrRouteData = errors.New("invalid route data")
)
