package gateway

import "unsafe"

// arena carves the memory of the messages the pipeline builds (header
// lists, header values and keys, envelopes) out of large blocks, instead
// of three allocations per message. A block is never reused: it lives
// until the last message in it is gone (its batch acknowledged), so
// nothing kafka-go or a retry still holds is ever written over. One
// goroutine uses an arena; a nil arena allocates as usual.
type arena struct {
	bytes   []byte   // the current block's free space, length 0
	headers []Header // the current header block's free space, length 0
}

const (
	arenaBytes   = 64 << 10 // bytes per block
	arenaHeaders = 512      // headers per block
)

// take returns an empty slice with room for n bytes. The caller appends to
// it, then calls keep with the result, before the next take.
func (a *arena) take(n int) []byte {
	if a == nil || n > arenaBytes/8 {
		return make([]byte, 0, n)
	}
	if cap(a.bytes) < n {
		a.bytes = make([]byte, 0, arenaBytes)
	}
	return a.bytes[:0:n]
}

// keep marks b, made by appending to what take returned, as used. If an
// append outgrew the room, b is elsewhere and the room is free again.
func (a *arena) keep(b []byte) {
	if a != nil && len(b) > 0 && unsafe.SliceData(b) == unsafe.SliceData(a.bytes) {
		a.bytes = a.bytes[len(b):len(b)]
	}
}

// takeHeaders and keepHeaders are take and keep for header lists.
func (a *arena) takeHeaders(n int) []Header {
	if a == nil || n > arenaHeaders/8 {
		return make([]Header, 0, n)
	}
	if cap(a.headers) < n {
		a.headers = make([]Header, 0, arenaHeaders)
	}
	return a.headers[:0:n]
}

func (a *arena) keepHeaders(h []Header) {
	if a != nil && len(h) > 0 && unsafe.SliceData(h) == unsafe.SliceData(a.headers) {
		a.headers = a.headers[len(h):len(h)]
	}
}
