package gateway

import "unsafe"

// arena carves the memory of the messages the pipeline builds (header
// lists, header values and keys, envelopes) out of large blocks, instead
// of three allocations per message. A block is never reused: it lives
// until the last message in it is gone (its batch acknowledged), so
// nothing kafka-go or a retry still holds is ever written over. One
// goroutine uses an arena; a nil arena allocates as usual.
type arena struct {
	bytes   blocks[byte]
	headers blocks[Header]
}

const (
	arenaBytes   = 64 << 10 // bytes per block
	arenaHeaders = 512      // headers per block
)

// take returns an empty slice with room for n bytes. The caller appends to
// it, then calls keep with the result, before the next take.
func (a *arena) take(n int) []byte {
	if a == nil {
		return make([]byte, 0, n)
	}
	return a.bytes.take(n, arenaBytes)
}

// keep marks b, made by appending to what take returned, as used. If an
// append outgrew the room, b is elsewhere and the room is free again.
func (a *arena) keep(b []byte) {
	if a != nil {
		a.bytes.keep(b)
	}
}

// takeHeaders and keepHeaders are take and keep for header lists.
func (a *arena) takeHeaders(n int) []Header {
	if a == nil {
		return make([]Header, 0, n)
	}
	return a.headers.take(n, arenaHeaders)
}

func (a *arena) keepHeaders(h []Header) {
	if a != nil {
		a.headers.keep(h)
	}
}

// blocks hands out room in blocks of T; free is the current block's free
// space, length 0.
type blocks[T any] struct{ free []T }

// take returns room for n elements from a block of size (a slice of its
// own when n is over an eighth of a block).
func (b *blocks[T]) take(n, size int) []T {
	if n > size/8 {
		return make([]T, 0, n)
	}
	if cap(b.free) < n {
		b.free = make([]T, 0, size)
	}
	return b.free[:0:n]
}

// keep marks s used if it is still where take put it.
func (b *blocks[T]) keep(s []T) {
	if len(s) > 0 && unsafe.SliceData(s) == unsafe.SliceData(b.free) {
		b.free = b.free[len(s):len(s)]
	}
}
