package gateway

import "errors"

var (
	// ErrFull is returned by Buffer.Append when the log has reached its size
	// cap. Nothing was stored; the caller must apply backpressure to its device
	// rather than acknowledge.
	ErrFull = errors.New("buffer full")

	// ErrClosed is returned by a Buffer or Sink used after Close.
	ErrClosed = errors.New("closed")

	// ErrCorrupt is returned by DecodeRecord for bytes that are not a record
	// this version can read.
	ErrCorrupt = errors.New("corrupt record")

	// ErrNotConnected is returned by CommandTarget.Deliver when the device
	// has no connection to that adapter.
	ErrNotConnected = errors.New("device not connected")

	// ErrNoRoute is returned by Router.Route when no rule matches a topic.
	ErrNoRoute = errors.New("no route matches")
)
