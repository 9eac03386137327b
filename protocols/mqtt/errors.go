package mqtt

import "errors"

var (
	// ErrNotStarted is returned by Addr before Start bound the listener.
	ErrNotStarted = errors.New("mqtt server not started")
)
