package buffer

import (
	"errors"

	"github.com/iotgw/iotgw/gateway"
)

var (
	// ErrFull is gateway.ErrFull: Append refused the record because the log
	// (or the queue of records waiting for the writer) is at its size cap.
	// Nothing was stored and done will not be called.
	ErrFull = gateway.ErrFull

	// ErrClosed is gateway.ErrClosed: the Log was used after Close.
	ErrClosed = gateway.ErrClosed

	// ErrTooLarge is returned by Append for a record larger than
	// buffer.max_record_bytes. Nothing was stored and done will not be called.
	ErrTooLarge = errors.New("record larger than buffer.max_record_bytes")

	// ErrCorrupt is wrapped by errors about bytes in a segment that are not
	// a valid frame (bad checksum, bad header, torn write).
	ErrCorrupt = errors.New("corrupt buffer frame")

	// ErrLocked is returned by Open when another process (or another Log in
	// this process) has the directory open.
	ErrLocked = errors.New("buffer directory is in use")

	// ErrFormat is returned by Open for a segment or checkpoint written in a
	// format version this build cannot read.
	ErrFormat = errors.New("unsupported buffer format version")

	// ErrOffsetOutOfRange is returned by Commit for an offset that was never
	// made durable.
	ErrOffsetOutOfRange = errors.New("offset out of range")
)
