package simulator

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// stats are the run-wide counters every device updates.
type stats struct {
	connected atomic.Int64 // devices with a live connection now
	connects  atomic.Int64 // successful connects, reconnects included
	sent      atomic.Int64
	acked     atomic.Int64
	refused   atomic.Int64
	errors    atomic.Int64
	retries   atomic.Int64
	latency   latencyHistogram
}

// countBatch is how many counts a device may hold back from a run-wide
// counter.
const countBatch = 64

// heldCount is one goroutine's share of a run-wide counter, added to it in
// batches: an atomic that every device bumps for every message is a cache
// line the cores fight over, and it cost more than the rest of a message's
// bookkeeping. The owner flushes before it waits and when it is done, so
// the counter lags by at most countBatch per device, and only while the
// device is busy.
type heldCount struct {
	to *atomic.Int64
	n  int64
}

func (h *heldCount) add() {
	h.n++
	if h.n == countBatch {
		h.flush()
	}
}

func (h *heldCount) flush() {
	if h.n != 0 {
		h.to.Add(h.n)
		h.n = 0
	}
}

// progress writes one line per second to w, and a last one when ctx is
// done.
func (s *stats) progress(ctx context.Context, w io.Writer, start time.Time, devices int) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastAcked, lastSent int64
	last := start
	line := func(now time.Time) {
		acked, sent := s.acked.Load(), s.sent.Load()
		secs := max(now.Sub(last).Seconds(), 1e-3)
		ackRate := float64(acked-lastAcked) / secs
		sendRate := float64(sent-lastSent) / secs
		lastAcked, lastSent, last = acked, sent, now
		fmt.Fprintf(w, "%7s  connected %d/%d  sent %d  acked %d  refused %d  errors %d  retries %d  rate %.0f acked/s (%.0f sent/s)\n",
			now.Sub(start).Round(100*time.Millisecond), s.connected.Load(), devices,
			sent, acked, s.refused.Load(), s.errors.Load(), s.retries.Load(), ackRate, sendRate)
	}
	for {
		select {
		case <-ctx.Done():
			line(time.Now())
			return
		case now := <-tick.C:
			line(now)
		}
	}
}
