package coap

import (
	"net/netip"
	"testing"
	"time"
)

func TestDedupCache(t *testing.T) {
	ep := epKey{addr: netip.MustParseAddrPort("192.0.2.7:40000"), tr: transportUDP}
	other := epKey{addr: netip.MustParseAddrPort("192.0.2.8:40000"), tr: transportUDP}
	now := time.Unix(1000, 0)
	c := newDedupCache(3000, exchangeLifetime)

	st, t1, _ := c.begin(dedupKey{ep, 1}, now)
	if st != dedupNew {
		t.Fatalf("first: %v", st)
	}
	if st, _, _ := c.begin(dedupKey{ep, 1}, now); st != dedupPending {
		t.Fatalf("while pending: %v", st)
	}
	if st, _, _ := c.begin(dedupKey{other, 1}, now); st != dedupNew {
		t.Fatalf("same id, other endpoint: %v", st)
	}
	// Growing the ring past its first 1024 entries keeps tickets valid.
	for i := 2; i < 2500; i++ {
		c.begin(dedupKey{ep, uint16(i)}, now)
	}
	c.finish(t1, []byte("ack"))
	st, _, resp := c.begin(dedupKey{ep, 1}, now.Add(exchangeLifetime-time.Second))
	if st != dedupDone || string(resp) != "ack" {
		t.Fatalf("after finish: %v %q", st, resp)
	}
	// After EXCHANGE_LIFETIME the id is new again.
	if st, _, _ := c.begin(dedupKey{ep, 1}, now.Add(exchangeLifetime)); st != dedupNew {
		t.Fatalf("after the lifetime: %v", st)
	}
	if c.evictedEarly() != 0 {
		t.Fatalf("evicted %d before expiry", c.evictedEarly())
	}

	// Full: the oldest goes first and is counted.
	small := newDedupCache(2, exchangeLifetime)
	_, a, _ := small.begin(dedupKey{ep, 1}, now)
	small.begin(dedupKey{ep, 2}, now)
	small.begin(dedupKey{ep, 3}, now)
	if small.evictedEarly() != 1 || small.len() != 2 {
		t.Fatalf("evicted %d, len %d", small.evictedEarly(), small.len())
	}
	small.finish(a, []byte("late")) // the entry is gone: no effect
	if st, _, _ := small.begin(dedupKey{ep, 1}, now); st != dedupNew {
		t.Fatalf("evicted entry: %v", st)
	}

	// forget makes a refused request new again.
	_, f, _ := c.begin(dedupKey{other, 9}, now)
	c.forget(f)
	if st, _, _ := c.begin(dedupKey{other, 9}, now); st != dedupNew {
		t.Fatalf("after forget: %v", st)
	}
}
