package coap

import (
	"net/netip"
	"sync"
	"time"
)

// exchangeLifetime is RFC 7252's EXCHANGE_LIFETIME with the default
// transmission parameters: how long a sender may retransmit a confirmable
// message (MAX_TRANSMIT_SPAN, 45 s) plus the worst network delays. A message
// id from one endpoint is not reused within it, so a message id seen again
// in that time is a retransmission.
const exchangeLifetime = 247 * time.Second

// Transports, part of an endpoint key.
const (
	transportUDP uint8 = iota + 1
	transportDTLS
	transportTCP
	transportTLS
)

// epKey identifies a remote endpoint: the address for UDP, the address and
// the connection for DTLS, TCP and TLS (a new DTLS session from the same
// address is a new security context, RFC 7252 §9.1).
type epKey struct {
	addr netip.AddrPort
	tr   uint8
	conn uint64
}

type dedupKey struct {
	ep  epKey
	mid uint16
}

// dedupEntry is one exchange: pending until its answer is known, then the
// encoded answer (empty for a request that gets none).
type dedupEntry struct {
	key     dedupKey
	seq     uint64
	expires int64 // unix nanoseconds
	done    bool
	resp    []byte
}

// dedupState is what begin found.
type dedupState uint8

const (
	dedupNew     dedupState = iota // first time: handle it
	dedupPending                   // a copy is being handled: ignore this one
	dedupDone                      // answered before: resend the answer
)

// dedupTicket lets finish find the entry begin made, unless it was evicted
// since (the sequence number tells a new entry for the same key apart).
type dedupTicket struct {
	key dedupKey
	seq uint64
}

// dedupCache is the server-wide message deduplication of RFC 7252 §4.5:
// a ring of entries in arrival order plus an index. Every entry has the same
// lifetime, so the oldest is always at the head and expiry is a pop from the
// front; when the ring is full the oldest goes early and is counted, so an
// operator can see when dedup_entries is too small for the message rate.
type dedupCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	ring    []dedupEntry // grows by doubling up to max
	index   map[dedupKey]int32
	head    int
	n       int
	seq     uint64
	evicted uint64
}

func newDedupCache(size int, ttl time.Duration) *dedupCache {
	return &dedupCache{ttl: ttl, max: size, ring: make([]dedupEntry, min(size, 1024)), index: map[dedupKey]int32{}}
}

// grow doubles the ring (up to max), moving the entries to its start in
// arrival order.
func (c *dedupCache) grow() {
	ring := make([]dedupEntry, min(2*len(c.ring), c.max))
	for i := range c.n {
		e := c.ring[(c.head+i)%len(c.ring)]
		ring[i] = e
		if j, ok := c.index[e.key]; ok && int(j) == (c.head+i)%len(c.ring) && e.seq != 0 {
			c.index[e.key] = int32(i)
		}
	}
	c.ring, c.head = ring, 0
}

// begin looks k up and, if it is new, reserves an entry for it. For
// dedupDone it returns the stored answer (nil if there was none).
func (c *dedupCache) begin(k dedupKey, now time.Time) (dedupState, dedupTicket, []byte) {
	ns := now.UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n > 0 && c.ring[c.head].expires <= ns {
		c.pop()
	}
	if i, ok := c.index[k]; ok {
		e := &c.ring[i]
		if !e.done {
			return dedupPending, dedupTicket{}, nil
		}
		return dedupDone, dedupTicket{}, e.resp
	}
	if c.n == len(c.ring) && len(c.ring) < c.max {
		c.grow()
	}
	if c.n == len(c.ring) {
		c.pop()
		c.evicted++
	}
	i := (c.head + c.n) % len(c.ring)
	c.n++
	c.seq++
	c.ring[i] = dedupEntry{key: k, seq: c.seq, expires: ns + int64(c.ttl)}
	c.index[k] = int32(i)
	return dedupNew, dedupTicket{key: k, seq: c.seq}, nil
}

// finish stores the answer of the exchange begin reserved; resp may be nil
// for a request that gets no answer.
func (c *dedupCache) finish(t dedupTicket, resp []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.lookup(t); e != nil {
		e.done, e.resp = true, resp
	}
}

func (c *dedupCache) lookup(t dedupTicket) *dedupEntry {
	i, ok := c.index[t.key]
	if !ok || c.ring[i].seq != t.seq {
		return nil
	}
	return &c.ring[i]
}

// forget drops the exchange begin reserved, so that a retransmission is
// handled as new: for requests refused before any state changed (a full
// buffer), where answering a retransmission from the cache would only
// repeat a stale refusal.
func (c *dedupCache) forget(t dedupTicket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.lookup(t); e != nil {
		delete(c.index, e.key)
		e.seq = 0
	}
}

func (c *dedupCache) pop() {
	e := &c.ring[c.head]
	if e.seq != 0 {
		if i, ok := c.index[e.key]; ok && int(i) == c.head {
			delete(c.index, e.key)
		}
	}
	*e = dedupEntry{}
	c.head = (c.head + 1) % len(c.ring)
	c.n--
}

func (c *dedupCache) evictedEarly() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.evicted
}

func (c *dedupCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.index)
}
