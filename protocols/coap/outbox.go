package coap

import (
	"net"
	"net/netip"
	"sync"
)

// datagram is one UDP or DTLS message to send.
type datagram struct {
	udp  *net.UDPConn
	addr netip.AddrPort
	conn net.Conn // DTLS; nil for UDP
	b    []byte
}

// outbox writes datagrams on one goroutine. Answers are released by the
// buffer's completion callbacks, which run on the log's writer goroutine
// and must not block on the network; they queue here instead. The queue
// holds at most one answer per request in flight (coap.max_inflight) plus
// the notifications being delivered, so it is bounded by those limits.
type outbox struct {
	mu     sync.Mutex
	queue  []datagram
	spare  []datagram
	wake   chan struct{}
	closed bool
	busy   bool
}

func newOutbox() *outbox {
	return &outbox{wake: make(chan struct{}, 1)}
}

func (o *outbox) push(d datagram) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.queue = append(o.queue, d)
	// Under the lock, so that close cannot close wake in between.
	select {
	case o.wake <- struct{}{}:
	default:
	}
	o.mu.Unlock()
}

// pending counts datagrams queued or being written.
func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(o.queue)
	if o.busy {
		n++
	}
	return n
}

func (o *outbox) run() {
	for range o.wake {
		for {
			o.mu.Lock()
			if len(o.queue) == 0 || o.closed {
				o.busy = false
				o.mu.Unlock()
				break
			}
			batch := o.queue
			o.queue, o.spare = o.spare[:0], nil
			o.busy = true
			o.mu.Unlock()
			for i := range batch {
				d := &batch[i]
				if d.conn != nil {
					_, _ = d.conn.Write(d.b)
				} else {
					_, _ = d.udp.WriteToUDPAddrPort(d.b, d.addr)
				}
				*d = datagram{}
			}
			o.mu.Lock()
			o.spare = batch[:0]
			o.mu.Unlock()
		}
	}
}

// close stops run after the batch it is writing. Safe to call twice.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.closed = true
	o.queue = nil
	close(o.wake)
}
