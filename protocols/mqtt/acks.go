package mqtt

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ackQueue releases one connection's acknowledgements in the order its
// PUBLISHes arrived. A slot is reserved on the client's read loop before
// the append; the buffer's completion callback fills it; a short-lived
// writer goroutine drains filled slots from the head, and writes all the
// acks one group commit released in one write. Callbacks never write to
// the network themselves, so a slow client cannot stall the buffer's
// writer.
type ackQueue struct {
	cl   *mochi.Client
	s    *Server
	sess *session

	mu      sync.Mutex
	slots   []*ackSlot
	free    []*ackSlot // written slots, for reuse
	writing bool
	room    chan struct{} // closed when slots shrink; made by tryReserve
}

// ackSlot is one PUBLISH waiting for its ack. It stays small: there is one
// per message in flight. Slots are reused once their ack is written, with
// the completion function bound to them when they were made: two
// allocations per publish fewer.
type ackSlot struct {
	q       *ackQueue
	done    func(error) // sl.complete, for Buffer.Append
	id      uint16
	qos     byte            // 1: PUBACK, 2: PUBREC
	reason  byte            // MQTT 5 reason code; 0 is success
	publish *packets.Packet // fanned out to local subscribers before the ack, if any
	ready   bool
	drop    bool // no ack: the connection is closed instead (append failure)
}

// complete is the buffer's completion of the slot's append.
func (sl *ackSlot) complete(err error) {
	q := sl.q
	if err != nil {
		q.sess.failed.Store(true)
		q.s.stats.appendErrors.Add(1)
		q.s.log.Error("durable append failed; closing connection without ack", "device", q.sess.device, "error", err)
		sl.drop = true
	}
	q.fill(sl)
}

// maxFreeSlots bounds the slots a queue keeps for reuse.
const maxFreeSlots = 1024

func (q *ackQueue) reserve(pk *packets.Packet) *ackSlot {
	sl, _ := q.tryReserve(pk, 0)
	return sl
}

// tryReserve appends a slot for pk if fewer than max slots are pending
// (max 0: whatever the count). Otherwise it returns nil and a channel
// closed once some are written. One lock for the check and the append:
// every publish passes here.
func (q *ackQueue) tryReserve(pk *packets.Packet, max int) (*ackSlot, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if max > 0 && len(q.slots) >= max {
		if q.room == nil {
			q.room = make(chan struct{})
		}
		return nil, q.room
	}
	var sl *ackSlot
	if n := len(q.free); n > 0 {
		sl = q.free[n-1]
		q.free[n-1] = nil
		q.free = q.free[:n-1]
		*sl = ackSlot{q: q, done: sl.done}
	} else {
		sl = &ackSlot{q: q}
		sl.done = sl.complete
	}
	sl.id, sl.qos = pk.PacketID, pk.FixedHeader.Qos
	q.slots = append(q.slots, sl)
	return sl, nil
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
	var batch []*ackSlot
	for {
		q.mu.Lock()
		// The slots of the last batch are written: nothing refers to them
		// any more (the buffer called their completion before they were
		// ready).
		for _, sl := range batch {
			if len(q.free) < maxFreeSlots {
				q.free = append(q.free, sl)
			}
		}
		clear(batch)
		n := 0
		for n < len(q.slots) && q.slots[n].ready {
			n++
		}
		if n == 0 {
			q.writing = false
			q.mu.Unlock()
			return
		}
		batch = append(batch[:0], q.slots[:n]...)
		clear(q.slots[:n])
		q.slots = q.slots[n:]
		if q.room != nil {
			close(q.room)
			q.room = nil
		}
		q.mu.Unlock()
		q.s.release(q.cl, batch)
	}
}

// pending reports slots not yet written, for shutdown.
func (q *ackQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.slots)
}

// release handles a run of ready slots in order: each stored message is
// fanned out to local subscribers and the retained store, then the acks go
// out, the successful ones encoded together and written at once. Fan-out
// comes first so a device that has its ack can count on the retained
// message being in place. A failed append closes the connection there,
// unacknowledged, so the device resends it and everything after it.
func (s *Server) release(cl *mochi.Client, batch []*ackSlot) {
	var out []byte
	flush := func() bool {
		if len(out) == 0 {
			return true
		}
		err := s.writeRaw(cl, out)
		out = out[:0]
		if err != nil {
			s.log.Debug("acks not written", "client", cl.ID, "error", err)
			return false
		}
		return true
	}
	for _, sl := range batch {
		if sl.drop {
			flush()
			cl.Stop(errors.New("message not stored; closing so the device resends"))
			return
		}
		if sl.publish != nil {
			s.fanOut(cl, sl.publish)
		}
		if sl.reason >= packets.ErrUnspecifiedError.Code {
			if !flush() {
				return
			}
			if err := cl.WritePacket(sl.packet()); err != nil {
				s.log.Debug("ack not written", "client", cl.ID, "error", err)
				return
			}
			continue
		}
		if sl.qos == 2 {
			// mochi answers the PUBREL from its inflight table.
			cl.State.Inflight.Set(sl.packet())
		}
		out = sl.appendAck(out)
	}
	if flush() {
		n := 0
		for _, sl := range batch {
			if sl.reason < packets.ErrUnspecifiedError.Code {
				n++
			}
		}
		s.stats.acked.Add(uint64(n))
	}
}

// appendAck encodes a successful PUBACK or PUBREC: MQTT 3.1.1 and 5 share
// this form (MQTT 5 omits the reason code and properties of a success).
func (sl *ackSlot) appendAck(b []byte) []byte {
	typ := byte(packets.Puback << 4)
	if sl.qos == 2 {
		typ = packets.Pubrec << 4
	}
	return append(b, typ, 2, byte(sl.id>>8), byte(sl.id))
}

// packet is the slot's ack as mochi's packet, for refusals (with a reason
// string) and for mochi's QoS 2 inflight table.
func (sl *ackSlot) packet() packets.Packet {
	typ := byte(packets.Puback)
	if sl.qos == 2 {
		typ = packets.Pubrec
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: typ},
		PacketID:    sl.id,
		ReasonCode:  sl.reason,
		Created:     time.Now().Unix(),
	}
	if sl.reason >= packets.ErrUnspecifiedError.Code {
		for _, c := range []packets.Code{packets.ErrQuotaExceeded, packets.ErrMessageRateTooHigh, packets.ErrPacketTooLarge, packets.ErrUnspecifiedError} {
			if c.Code == sl.reason {
				ack.Properties.ReasonString = c.Reason
			}
		}
	}
	return ack
}

// writeRaw writes encoded packets to the client under the client's lock,
// which mochi holds for each of its own writes, so packets never
// interleave.
func (s *Server) writeRaw(cl *mochi.Client, b []byte) error {
	if cl.Closed() {
		return mochi.ErrConnectionClosed
	}
	cl.Lock()
	n, err := cl.Net.Conn.Write(b)
	cl.Unlock()
	atomic.AddInt64(&s.mochi.Info.BytesSent, int64(n))
	return err
}
