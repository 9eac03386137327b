package mqtt

import (
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// deviceTable is the adapter's state per device identity (the
// authenticated device id in registry mode, the client id in open mode):
// which session is the device's current one, and its message rate budget.
// The budget outlives sessions so that reconnecting does not refill it;
// sweep drops entries of devices that are gone and whose budget is full
// again, which is indistinguishable from a fresh entry.
type deviceTable struct {
	mu      sync.Mutex
	devices map[string]*deviceState
	rate    float64 // tokens per second; 0 means unlimited
	burst   float64
}

type deviceState struct {
	owner  *session // the device's current session, nil when disconnected
	bucket tokenBucket
}

// tokenBucket is a classic token bucket; guarded by deviceTable.mu.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

func newDeviceTable(rate float64, burst int) *deviceTable {
	return &deviceTable{devices: map[string]*deviceState{}, rate: rate, burst: float64(burst)}
}

// getLocked returns the device's entry, creating it with a full budget.
func (t *deviceTable) getLocked(id string, now time.Time) *deviceState {
	d := t.devices[id]
	if d == nil {
		d = &deviceState{bucket: tokenBucket{tokens: t.burst, last: now}}
		t.devices[id] = d
	}
	return d
}

// own makes s the device's current session.
func (t *deviceTable) own(id string, s *session, now time.Time) {
	t.mu.Lock()
	t.getLocked(id, now).owner = s
	t.mu.Unlock()
}

// release clears the device's current session if it is s, and reports
// whether it was: a session that a newer connection of the same device
// took over must not mark the device offline.
func (t *deviceTable) release(id string, s *session) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.devices[id]
	if d == nil || d.owner != s {
		return false
	}
	d.owner = nil
	return true
}

// owner returns the device's current session, or nil.
func (t *deviceTable) owner(id string) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.devices[id]; d != nil {
		return d.owner
	}
	return nil
}

// take spends one message of the device's budget. When the budget is
// empty it spends nothing and returns how long until one message is
// allowed. Always allowed when the rate is unlimited.
func (t *deviceTable) take(id string, now time.Time) (ok bool, wait time.Duration) {
	if t.rate == 0 {
		return true, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := &t.getLocked(id, now).bucket
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(t.burst, b.tokens+el*t.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / t.rate * float64(time.Second))
}

// sweep drops entries with no session and a full budget.
func (t *deviceTable) sweep(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, d := range t.devices {
		if d.owner != nil {
			continue
		}
		bk := &d.bucket
		if t.rate == 0 || bk.tokens+now.Sub(bk.last).Seconds()*t.rate >= t.burst {
			delete(t.devices, id)
		}
	}
}

// len is the number of entries, for tests.
func (t *deviceTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.devices)
}

// session is the adapter's state for one connected client, from
// OnSessionEstablished (after CONNACK, right before mochi starts reading
// its packets) to OnDisconnect, which mochi always calls after that.
type session struct {
	cl     *mochi.Client
	device string // identity: device id (registry) or client id (open)
	acks   ackQueue
	// failed is set when a durable append of this connection failed: the
	// connection closes unacknowledged and stores nothing more, so that
	// nothing the device sent after the failed message is stored before
	// the device resends that one.
	failed atomic.Bool

	mu       sync.Mutex
	commands map[uint16]*pendingCommand // downlink PUBLISHes waiting for their PUBACK, by packet id
	pending  atomic.Int32               // len(commands), read without mu on every publish
	ended    bool
}

// pendingCommand is a downlink PUBLISH waiting for its PUBACK.
type pendingCommand struct {
	pk    packets.Packet // as kept in the client's inflight table
	acked chan byte      // gets the PUBACK's reason code; buffered
}
