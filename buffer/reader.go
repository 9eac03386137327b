package buffer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"

	"github.com/iotgw/iotgw/gateway"
)

// reader is the consumer's position: an open segment file read with pread
// through the scanner's fixed buffer. Guarded by Log.readMu.
type reader struct {
	f    *os.File
	seg  uint64 // base of the segment f holds; 0 when none
	sc   *scanner
	next uint64 // the offset Read returns next (or the first after it that exists)
	// slabs are the full-size slabs the last Read filled, remembered once
	// the consumer has called TakeSlabs (track): one that never does
	// keeps no more than its entries.
	slabs [][]byte
	track bool
	// entries is a slice RecycleEntries gave back, for the next Read's
	// result.
	entries []gateway.Entry
}

// slabSize is how much memory Read allocates at a time for the records it
// returns; records share slabs so that small records cost one allocation
// per slab, not one each.
const slabSize = 64 << 10

// Read blocks until a durable record past the read cursor exists and
// returns up to maxRecords records totalling at most maxBytes (at least
// one); see gateway.Buffer. Records are read from the segment files, so
// memory does not grow with the backlog. Corrupt records are skipped and
// counted in Stats.CorruptSkipped.
func (l *Log) Read(ctx context.Context, maxRecords, maxBytes int) ([]gateway.Entry, error) {
	maxRecords = max(maxRecords, 1)
	l.readMu.Lock()
	defer l.readMu.Unlock()
	clear(l.rd.slabs) // slabs not taken go to the garbage collector
	l.rd.slabs = l.rd.slabs[:0]
	for {
		l.mu.Lock()
		for {
			if l.closed {
				l.mu.Unlock()
				return nil, ErrClosed
			}
			if l.lastVisible >= max(l.rd.next, l.commit+1) {
				break
			}
			ch := l.visibleCh
			l.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			l.mu.Lock()
		}
		ch := l.visibleCh
		l.mu.Unlock()
		out, err := l.readVisible(maxRecords, maxBytes)
		if len(out) > 0 || err != nil {
			return out, err
		}
		// Everything visible was damaged and skipped: wait for more.
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// newSlab returns an empty slab of capacity size: a recycled one when
// size is slabSize (and remembered for TakeSlabs), else a new one.
func (l *Log) newSlab(size int64) []byte {
	if size != slabSize {
		return make([]byte, 0, size)
	}
	var slab []byte
	if v, ok := l.slabPool.Get().(*[]byte); ok {
		slab = (*v)[:0]
		l.stats.slabReuses.Add(1)
	} else {
		slab = make([]byte, 0, slabSize)
	}
	if l.rd.track {
		l.rd.slabs = append(l.rd.slabs, slab)
	}
	return slab
}

// TakeSlabs returns the full-size slabs the last Read copied its records'
// data into, for RecycleSlabs once nothing reads that data any more. Reads
// remember their slabs from the first call on; slabs not taken before the
// next Read are left to the garbage collector.
func (l *Log) TakeSlabs() [][]byte {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	l.rd.track = true
	if len(l.rd.slabs) == 0 {
		return nil
	}
	slabs := append([][]byte(nil), l.rd.slabs...)
	clear(l.rd.slabs)
	l.rd.slabs = l.rd.slabs[:0]
	return slabs
}

// RecycleSlabs gives slabs from TakeSlabs back for later Reads to fill:
// the data of every entry in them must no longer be read. Safe to call
// concurrently with Read.
func (l *Log) RecycleSlabs(slabs [][]byte) {
	for _, s := range slabs {
		if cap(s) == slabSize {
			s = s[:0]
			l.slabPool.Put(&s)
		}
	}
}

// RecycleEntries gives back a slice Read returned, for a later Read to
// return again: the caller must no longer use the slice (the records' data
// is not affected; see RecycleSlabs). Must not be called while a Read
// runs.
func (l *Log) RecycleEntries(entries []gateway.Entry) {
	if cap(entries) > cap(l.rd.entries) {
		clear(entries)
		l.rd.entries = entries[:0]
	}
}

// readVisible returns what it can read without waiting. When it returns no
// records and no error, it has moved the cursor past everything visible.
func (l *Log) readVisible(maxRecords, maxBytes int) ([]gateway.Entry, error) {
	r := &l.rd
	out := r.entries
	r.entries = nil
	var (
		slab  []byte
		total int
		last  mark
	)
loop:
	for len(out) < maxRecords {
		l.mu.Lock()
		if r.next <= l.commit {
			r.next = l.commit + 1
		}
		lastVis := l.lastVisible
		if r.next > lastVis {
			l.mu.Unlock()
			break
		}
		idx, cur := l.segmentByBase(r.seg)
		if r.f == nil || cur == nil || (idx+1 < len(l.segs) && l.segs[idx+1].base <= r.next) {
			// Position at the segment holding r.next: on the first Read,
			// after a Commit past the current segment, or when the current
			// one was deleted.
			idx = l.segmentIndex(r.next)
			cur = l.segs[idx]
			if r.next < cur.base {
				// Only committed records precede the first segment.
				r.next = cur.base
			}
			pos := int64(segmentHeaderSize)
			if h := l.hint; h.seg == cur.base && h.off < r.next && h.pos > pos && h.pos <= cur.visible {
				pos = h.pos
			}
			path, sealed := cur.path, idx+1 < len(l.segs)
			var nextBase uint64
			if sealed {
				nextBase = l.segs[idx+1].base
			}
			l.mu.Unlock()
			if err := r.open(path, cur.base, pos); err != nil {
				if errors.Is(err, fs.ErrNotExist) && sealed {
					// Deleted after commit (the next pass finds it gone
					// from the list), or lost: then its records are.
					l.mu.Lock()
					_, still := l.segmentByBase(cur.base)
					l.mu.Unlock()
					if still != nil {
						l.skipped(r.next, nextBase, cur.base)
						r.next = nextBase
					}
					continue
				}
				return l.partial(out, last, err)
			}
			continue
		}
		visible, size := cur.visible, cur.size
		sealed := idx+1 < len(l.segs)
		nextBase := uint64(math.MaxUint64)
		if sealed {
			nextBase = l.segs[idx+1].base
		}
		l.mu.Unlock()

		r.sc.end = visible
		before := r.sc.pos
		fr, err := r.sc.next()
		switch {
		case err == nil:
			if fr.offset < r.next {
				continue // committed, or read already
			}
			if fr.offset >= nextBase || fr.offset > lastVis {
				// A valid frame that does not belong here: distrust the
				// rest of this segment.
				l.logger.Warn("frame offset outside its segment; skipping the rest of the segment", "segment", cur.base, "offset", fr.offset)
				r.sc.pos = r.sc.end
				continue
			}
			if len(out) > 0 && total+len(fr.data) > maxBytes {
				r.sc.pos = before
				break loop
			}
			if fr.offset > r.next {
				l.skipped(r.next, fr.offset, cur.base)
			}
			if cap(slab)-len(slab) < len(fr.data) {
				// Size the slab by what this Read can still return, so that
				// following the tail one record at a time stays cheap.
				want := min(int64(slabSize), int64(maxBytes-total), visible-before)
				slab = l.newSlab(max(int64(len(fr.data)), want))
			}
			start := len(slab)
			slab = append(slab, fr.data...)
			out = append(out, gateway.Entry{Offset: gateway.Offset(fr.offset), Data: slab[start:len(slab):len(slab)]})
			total += len(fr.data)
			r.next = fr.offset + 1
			last = mark{off: fr.offset, seg: cur.base, pos: r.sc.pos}
		case err == io.EOF:
			if sealed && r.sc.pos >= size {
				if r.next < nextBase {
					l.skipped(r.next, nextBase, cur.base)
					r.next = nextBase
				}
				r.close()
				continue
			}
			if !sealed && r.next <= lastVis {
				// The active segment has no more visible frames, so the
				// records it claims past here were corrupt.
				l.skipped(r.next, lastVis+1, cur.base)
				r.next = lastVis + 1
			}
			break loop
		case errors.Is(err, ErrCorrupt):
			bad := r.sc.pos
			found, _, rerr := r.sc.resync(r.next, min(nextBase, lastVis+1))
			if rerr != nil {
				return l.partial(out, last, fmt.Errorf("read segment %d: %w", cur.base, rerr))
			}
			l.logger.Warn("corrupt bytes in segment; skipping them", "segment", cur.base, "position", bad, "resumed", found, "resume_position", r.sc.pos, "error", err)
		default:
			return l.partial(out, last, fmt.Errorf("read segment %d: %w", cur.base, err))
		}
	}
	if len(out) > 0 {
		l.pushMark(last)
	}
	return out, nil
}

// partial returns the records read before an I/O error, or the error when
// there are none: the error will come back on the next Read.
func (l *Log) partial(out []gateway.Entry, last mark, err error) ([]gateway.Entry, error) {
	if len(out) == 0 {
		return nil, err
	}
	l.logger.Warn("read stopped early", "error", err)
	l.pushMark(last)
	return out, nil
}

// pushMark remembers where a Read batch ended, for Commit.
func (l *Log) pushMark(m mark) {
	l.mu.Lock()
	if len(l.marks) == maxMarks {
		l.marks = append(l.marks[:0], l.marks[maxMarks/2:]...)
	}
	l.marks = append(l.marks, m)
	l.mu.Unlock()
}

// skipped counts records [from, to) that could not be read.
func (l *Log) skipped(from, to, seg uint64) {
	if to <= from {
		return
	}
	l.stats.corrupt.Add(to - from)
	l.logger.Warn("skipped unreadable records", "segment", seg, "first_offset", from, "count", to-from)
}

func (r *reader) open(path string, base uint64, pos int64) error {
	r.close()
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		return fmt.Errorf("open segment %d: %w", base, err)
	}
	r.f, r.seg = f, base
	r.sc.reset(f, pos, pos)
	return nil
}

func (r *reader) close() {
	if r.f != nil {
		r.f.Close()
	}
	r.f, r.seg = nil, 0
}
