package mqtt

import (
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ackQueue releases one connection's acknowledgements in the order its
// PUBLISHes arrived. A slot is reserved on the client's read loop before
// the append; the buffer's completion callback fills it; a short-lived
// writer goroutine drains filled slots from the head. Callbacks never
// write to the network themselves, so a slow client cannot stall the
// buffer's writer.
type ackQueue struct {
	cl *mochi.Client
	s  *Server

	mu      sync.Mutex
	slots   []*ackSlot
	writing bool
	room    chan struct{} // closed when slots shrink; made by full
}

type ackSlot struct {
	ack     packets.Packet
	publish *packets.Packet // fanned out to local subscribers after the ack, if any
	ready   bool
	drop    bool // no ack: the connection is closed instead (3.1.1 append failure)
}

func (q *ackQueue) reserve() *ackSlot {
	sl := &ackSlot{}
	q.mu.Lock()
	q.slots = append(q.slots, sl)
	q.mu.Unlock()
	return sl
}

// fill marks a slot ready and starts the writer if the head can go.
func (q *ackQueue) fill(sl *ackSlot) {
	q.mu.Lock()
	sl.ready = true
	start := !q.writing && len(q.slots) > 0 && q.slots[0].ready
	if start {
		q.writing = true
	}
	q.mu.Unlock()
	if start {
		q.s.wg.Add(1)
		go q.drain()
	}
}

func (q *ackQueue) drain() {
	defer q.s.wg.Done()
	for {
		q.mu.Lock()
		n := 0
		for n < len(q.slots) && q.slots[n].ready {
			n++
		}
		if n == 0 {
			q.writing = false
			q.mu.Unlock()
			return
		}
		batch := make([]*ackSlot, n)
		copy(batch, q.slots[:n])
		q.slots = q.slots[n:]
		if q.room != nil {
			close(q.room)
			q.room = nil
		}
		q.mu.Unlock()
		for _, sl := range batch {
			q.s.release(q.cl, sl)
		}
	}
}

// pending reports slots not yet written, for shutdown.
func (q *ackQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.slots)
}

// full reports whether max slots or more are pending and, if so, returns a
// channel closed once some are written.
func (q *ackQueue) full(max int) (<-chan struct{}, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.slots) < max {
		return nil, false
	}
	if q.room == nil {
		q.room = make(chan struct{})
	}
	return q.room, true
}
