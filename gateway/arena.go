package gateway

import (
	"sync"
	"unsafe"
)

// arena carves the memory of the messages the pipeline builds (header
// lists, header values and keys, envelopes) out of large blocks, instead
// of three allocations per message. Nothing in a block is written over
// while a message in it may still be read: a block the arena moved on from
// is handed, by cut, to the batch being built, which contains its last
// messages, and recycle takes it back once that batch (and so every
// earlier one: batches are written in order) was acknowledged. Blocks
// wait for reuse in a sync.Pool, which lets the garbage collector have
// them when the gateway is idle. Without recycling a block was a fresh
// 64 KiB, zeroed, per 100 or so messages: a tenth of the gateway's CPU
// at full load went into clearing memory.
//
// One goroutine builds with an arena (take, keep, cut); recycle may be
// called from another. A nil arena allocates as usual.
type arena struct {
	bytes   blocks[byte]
	headers blocks[Header]
}

// retired is what cut returns: the blocks an arena moved on from.
type retired struct {
	bytes   [][]byte
	headers [][]Header
}

// cut hands over the blocks moved on from since the last cut; the batch
// being built holds the last messages in them.
func (a *arena) cut() retired {
	if a == nil {
		return retired{}
	}
	return retired{bytes: a.bytes.cut(), headers: a.headers.cut()}
}

// recycle makes r's blocks available again; every message in them must
// be gone.
func (a *arena) recycle(r retired) {
	if a == nil {
		return
	}
	a.bytes.recycle(r.bytes)
	a.headers.recycle(r.headers)
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

// blocks hands out room in blocks of T: block is the current one (length
// 0), free its free space (length 0), retired the blocks moved on from
// since the last cut, pool the recycled ones (of *[]T, length 0).
type blocks[T any] struct {
	block, free []T
	retired     [][]T
	pool        sync.Pool
}

// take returns room for n elements from a block of size (a slice of its
// own when n is over an eighth of a block).
func (b *blocks[T]) take(n, size int) []T {
	if n > size/8 {
		return make([]T, 0, n)
	}
	if cap(b.free) < n {
		if b.block != nil {
			b.retired = append(b.retired, b.block)
		}
		if v, ok := b.pool.Get().(*[]T); ok && cap(*v) == size {
			b.block = *v
		} else {
			b.block = make([]T, 0, size)
		}
		b.free = b.block
	}
	return b.free[:0:n]
}

// keep marks s used if it is still where take put it.
func (b *blocks[T]) keep(s []T) {
	if len(s) > 0 && unsafe.SliceData(s) == unsafe.SliceData(b.free) {
		b.free = b.free[len(s):len(s)]
	}
}

func (b *blocks[T]) cut() [][]T {
	r := b.retired
	b.retired = nil
	return r
}

func (b *blocks[T]) recycle(r [][]T) {
	for _, blk := range r {
		blk = blk[:0]
		b.pool.Put(&blk)
	}
}
