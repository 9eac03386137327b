package mqtt

import (
	"sync"
	"syscall"
)

// Read-ahead: mochi reads each client through a small bufio.Reader (1 KiB,
// Options.ClientNetReadBufferSize, so that an idle connection stays small),
// which takes a device sending a burst of 100 telemetry messages 25 system
// calls. A trackedConn whose last read filled the reader's buffer expects
// more bytes waiting and takes them in one non-blocking read into a pooled
// 16 KiB buffer, which then serves the reader's next reads from memory.
// The buffer goes back to the pool as soon as it is drained, and a read
// that finds nothing waiting gives it back at once and blocks on the small
// buffer: a quiet connection never holds one (TestReadAheadIdleHoldsNothing).
// The publish path alone (BenchmarkPublishQoS1, docs/benchmarks-mqtt.md):
// 22% less system CPU and 10% less time per publish, with no cost to an
// idle connection, where a 16 KiB reader per client would cost 15 KiB each.

// readAheadSize is the pooled buffer's size; callers asking for as much or
// more read directly.
const readAheadSize = 16 << 10

var readAheadBufs = sync.Pool{New: func() any {
	b := make([]byte, readAheadSize)
	return &b
}}

// readAhead is a trackedConn's read-ahead state, used only by the goroutine
// that reads the connection.
type readAhead struct {
	raw       syscall.RawConn // nil: the connection has no descriptor to read without blocking
	buf       *[]byte         // held while it has unread bytes
	off, end  int
	streaming bool // the last read filled what it was given: more is likely waiting
	// Counts, for tests.
	aheadReads, directReads int
}

// read serves p from the held buffer, or from a non-blocking read into one
// when the connection is streaming; ok is false when the caller should
// read the connection itself (blocking), and then call after with what it
// got.
func (r *readAhead) read(p []byte) (n int, ok bool) {
	if r.buf == nil {
		if !r.streaming || r.raw == nil || len(p) >= readAheadSize {
			return 0, false
		}
		b := readAheadBufs.Get().(*[]byte)
		got := 0
		err := r.raw.Read(func(fd uintptr) bool {
			got = readNonblocking(fd, *b)
			return true // one attempt: never wait holding the buffer
		})
		if err != nil || got <= 0 {
			// Nothing waiting, the end of the stream or an error: the
			// blocking read finds out which, with no buffer held.
			readAheadBufs.Put(b)
			r.streaming = false
			return 0, false
		}
		r.buf, r.off, r.end = b, 0, got
		r.aheadReads++
		// Worth another try once drained only if it took more than one
		// direct read would have.
		r.streaming = got > len(p)
	}
	n = copy(p, (*r.buf)[r.off:r.end])
	r.off += n
	if r.off == r.end {
		readAheadBufs.Put(r.buf)
		r.buf = nil
	}
	return n, true
}

// after notes a direct read of n bytes into p.
func (r *readAhead) after(p []byte, n int) {
	r.streaming = n == len(p)
	r.directReads++
}
