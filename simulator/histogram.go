package simulator

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// latencyHistogram records durations in microseconds in log-linear
// buckets, HDR style: exact below 128 µs, then 64 buckets per power of two,
// so a quantile is within 1.6% of the true value. Memory is fixed (16 KiB)
// whatever the count; Record is lock-free and safe for concurrent use.
type latencyHistogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // exact values below this
	histHalf    = histSub / 2      // buckets per power of two above
	histMaxExp  = 36 - histSubBits // 2^36 µs is about 19 hours
	histBuckets = histSub + histMaxExp*histHalf
)

func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits
	if shift > histMaxExp {
		return histBuckets - 1
	}
	return histSub + (shift-1)*histHalf + int(v>>uint(shift)) - histHalf
}

// histUpper is the largest value that falls in bucket i.
func histUpper(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	k := i - histSub
	shift := uint(k/histHalf + 1)
	top := uint64(k%histHalf + histHalf)
	return (top+1)<<shift - 1
}

// Record adds one duration.
func (h *latencyHistogram) Record(d time.Duration) {
	us := uint64(max(0, d.Microseconds()))
	h.counts[histIndex(us)].Add(1)
	h.total.Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

// Count is the number of durations recorded.
func (h *latencyHistogram) Count() uint64 { return h.total.Load() }

// Max is the largest duration recorded.
func (h *latencyHistogram) Max() time.Duration {
	return time.Duration(h.max.Load()) * time.Microsecond
}

// Quantile returns the duration below which a fraction q (0..1) of the
// recorded durations fall; 0 when nothing was recorded.
func (h *latencyHistogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(1, min(rank, n))
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(min(histUpper(i), h.max.Load())) * time.Microsecond
		}
	}
	return h.Max()
}
