package buffer

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// writerState is owned by the writer goroutine (and by Open before it
// starts). Fields of the active segment are changed under Log.mu so that
// readers see them consistently.
type writerState struct {
	active     *os.File
	seg        *segment
	next       uint64    // the offset the next record gets
	dirty      bool      // written since the last fsync (sync "interval")
	dirtySince time.Time // when dirty was set
	unsynced   uint64    // records written since the last fsync (sync "interval")

	// broken is the error of a write or fsync whose bytes could not yet be
	// cut off the active segment. While it is set nothing else is written,
	// so no record is ever acknowledged behind bytes of unknown state.
	broken error
	// failing is set from a failed write until the next successful one, so
	// that a full disk logs twice, not once per batch.
	failing bool

	spare     []byte
	spareRecs []queued
	// smallBatches counts the batches in a row that used under a quarter
	// of a queue buffer larger than keepQueueCap (see drain).
	smallBatches int
}

// keepQueueCap is the queue buffer size the writer always keeps for reuse.
// A larger buffer is kept while batches keep using a good part of it (a
// steady heavy load reuses it instead of growing a new one per batch) and
// freed when they stop: after shrinkAfter batches in a row used under a
// quarter of it. Freeing it at the first small batch made a load with an
// occasional slow fsync (one large batch, then small ones again) regrow
// the buffer from 64 KiB by doubling, over and over: 150 bytes allocated
// per record in bench/egress's end-to-end run.
const (
	keepQueueCap = 1 << 20
	shrinkAfter  = 256
)

// runWriter is the writer goroutine: it takes everything queued, writes it
// with one write per segment, fsyncs once (group commit), then makes the
// records visible to Read and calls their done callbacks in order.
func (l *Log) runWriter() {
	defer l.wg.Done()
	var timer *time.Timer
	var timerC <-chan time.Time
	if l.opts.Sync == SyncInterval {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
	}
	for {
		select {
		case <-l.wake:
		case <-timerC:
			timerC = nil
		}
		closing := l.drain()
		if closing {
			if err := l.syncNow(); err != nil {
				l.logger.Error("final fsync failed", "error", err)
			}
			return
		}
		if l.w.dirty && timerC == nil {
			timer.Reset(l.opts.SyncInterval - time.Since(l.w.dirtySince))
			timerC = timer.C
		}
	}
}

// drain writes batches until the queue is empty and reports whether Close
// was called. Under sync "interval" it also fsyncs whenever the oldest
// unsynced write is sync_interval old, so that a steady stream of appends
// (which keeps drain from returning) does not postpone the fsync.
func (l *Log) drain() bool {
	for {
		l.syncIfDue()
		l.mu.Lock()
		batch, recs, closed := l.queue, l.queueRecs, l.closed
		l.queue, l.queueRecs = l.w.spare[:0], l.w.spareRecs[:0]
		l.writing = int64(len(batch))
		l.mu.Unlock()
		if len(recs) == 0 {
			l.w.spare, l.w.spareRecs = batch, recs
			return closed
		}
		l.flush(batch, recs)
		clear(recs) // drop the callbacks' references
		if cap(batch) <= keepQueueCap || len(batch) >= cap(batch)/4 {
			l.w.smallBatches = 0
		} else {
			l.w.smallBatches++
			if l.w.smallBatches >= shrinkAfter {
				batch, l.w.smallBatches = nil, 0
			}
		}
		l.w.spare, l.w.spareRecs = batch[:0], recs[:0]
	}
}

// syncIfDue fsyncs under sync "interval" when the oldest unsynced write is
// sync_interval old.
func (l *Log) syncIfDue() {
	if !l.w.dirty || time.Since(l.w.dirtySince) < l.opts.SyncInterval {
		return
	}
	if err := l.syncNow(); err != nil {
		l.logger.Error("periodic fsync failed; records acknowledged since the last fsync may be lost on power failure", "error", err)
		// Retry at the next interval rather than on every batch.
		l.w.dirtySince = time.Now()
	}
}

// flush writes one batch. Records are split into runs that fit the active
// segment; each run is one write (and one fsync under "always").
func (l *Log) flush(batch []byte, recs []queued) {
	first, firstSeg := l.w.next, l.w.seg
	ok := 0 // records written (and synced under "always")
	pos := 0
	var err error
	for ok < len(recs) {
		if err = l.repair(); err != nil {
			break
		}
		seg := l.w.seg
		j, end, size := ok, pos, seg.size
		for j < len(recs) {
			sz := int64(recs[j].size)
			if size > segmentHeaderSize && size+sz > int64(l.opts.SegmentBytes) {
				break
			}
			size += sz
			end += recs[j].size
			j++
		}
		if j == ok {
			if err = l.roll(); err != nil {
				break
			}
			continue
		}
		off := l.w.next
		for k, p := ok, pos; k < j; k++ {
			b := batch[p : p+recs[k].size]
			binary.LittleEndian.PutUint64(b[12:20], off)
			sealFrame(b, recs[k].dataCRC)
			off++
			p += recs[k].size
		}
		if err = l.writeRun(batch[pos:end], uint64(j-ok)); err != nil {
			break
		}
		ok, pos = j, end
	}

	// A failed write fails what was queued behind it too, and appends are
	// refused (ErrFull) for failHold. Otherwise a record appended after one
	// that failed could be written while the failed one is sent again
	// later by its device, after it: a device's order broken. The
	// callbacks below tell the appenders of the failed records (an MQTT
	// connection stops storing and closes) within the hold.
	var behind []queued
	l.mu.Lock()
	if err != nil {
		l.failErr, l.failUntil = err, time.Now().Add(failHold)
		behind = l.queueRecs
		l.queue, l.queueRecs = nil, nil
	}
	// Durable records become visible to Read before their appenders hear
	// of it, so that whoever is told "done" can also read them.
	l.writing = 0
	if ok > 0 {
		// Every segment this batch wrote to: the one active at the start
		// and any rolled to since.
		for i := len(l.segs) - 1; i >= 0; i-- {
			l.segs[i].visible = l.segs[i].size
			if l.segs[i] == firstSeg {
				break
			}
		}
		l.publishLocked(l.w.next - 1)
	}
	l.mu.Unlock()
	for k := range recs {
		if k < ok {
			finish(recs[k], gateway.Offset(first+uint64(k)), nil)
		} else {
			finish(recs[k], 0, err)
		}
	}
	for _, q := range behind {
		finish(q, 0, err)
	}
}

// failHold is how long appends are refused after a failed write: long
// enough for the appenders of the failed records to stop storing, short
// enough that a disk with room again is used again at once.
const failHold = 100 * time.Millisecond

func finish(q queued, off gateway.Offset, err error) {
	if q.done != nil {
		q.done(err)
	}
	if q.doneOff != nil {
		q.doneOff(off, err)
	}
}

// writeRun writes n whole frames at the end of the active segment and, under
// sync "always", fsyncs them.
func (l *Log) writeRun(b []byte, n uint64) error {
	seg := l.w.seg
	_, err := l.w.active.WriteAt(b, seg.size)
	if err == nil && l.opts.Sync == SyncAlways {
		err = l.datasync()
	}
	if err != nil {
		l.stats.writeErrors.Add(1)
		err = fmt.Errorf("write segment %d: %w", seg.base, err)
		if !l.w.failing {
			l.logger.Error("write failed; appends fail until writes succeed again", "segment", seg.base, "error", err)
			l.w.failing = true
		}
		l.w.broken = err
		if rerr := l.repair(); rerr != nil {
			l.logger.Error("cannot undo a failed write; appends fail until it can", "segment", seg.base, "error", rerr)
		}
		return err
	}
	if l.w.failing {
		l.logger.Info("writes succeed again", "segment", seg.base)
		l.w.failing = false
	}
	l.mu.Lock()
	seg.size += int64(len(b))
	seg.last = l.w.next + n - 1
	if l.opts.Sync == SyncAlways {
		seg.synced, seg.syncedLast = seg.size, seg.last
	}
	l.diskBytes += int64(len(b))
	l.writing -= int64(len(b))
	l.mu.Unlock()
	l.w.next += n
	if l.opts.Sync == SyncAlways {
		l.stats.fsyncs.Add(1)
		l.stats.syncedRecords.Add(n)
	} else {
		if !l.w.dirty {
			l.w.dirty, l.w.dirtySince = true, time.Now()
		}
		l.w.unsynced += n
	}
	return nil
}

// repair cuts the active segment back to the last size the log vouches for
// (everything acknowledged) after a failed write or fsync, and syncs that.
// Until it succeeds every batch fails: writing after bytes of unknown state
// would acknowledge records that recovery might then cut off or misread.
func (l *Log) repair() error {
	if l.w.broken == nil {
		return nil
	}
	seg := l.w.seg
	err := l.w.active.Truncate(seg.size)
	if err == nil {
		err = datasync(l.w.active)
	}
	if err != nil {
		return fmt.Errorf("%w; segment %d could not be cut back to its last good size: %v", l.w.broken, seg.base, err)
	}
	l.logger.Debug("cut segment back after a failed write", "segment", seg.base, "size", seg.size)
	l.w.broken = nil
	return nil
}

// syncNow fsyncs the active segment if it has unsynced writes (sync
// "interval").
func (l *Log) syncNow() error {
	if !l.w.dirty {
		return nil
	}
	seg := l.w.seg
	size, last := seg.size, seg.last
	if err := l.datasync(); err != nil {
		l.stats.writeErrors.Add(1)
		return fmt.Errorf("sync segment %d: %w", seg.base, err)
	}
	l.stats.fsyncs.Add(1)
	l.stats.syncedRecords.Add(l.w.unsynced)
	l.w.dirty, l.w.unsynced = false, 0
	l.mu.Lock()
	seg.synced, seg.syncedLast = size, last
	l.mu.Unlock()
	return nil
}

// roll seals the active segment (it is synced already under "always") and
// starts a new one whose base is the next offset.
func (l *Log) roll() error {
	if err := l.syncNow(); err != nil {
		return err
	}
	base := l.w.next
	f, err := createSegment(l.dir, base)
	if err != nil {
		l.stats.writeErrors.Add(1)
		return err
	}
	if err := l.w.active.Close(); err != nil {
		l.logger.Warn("close sealed segment", "segment", l.w.seg.base, "error", err)
	}
	seg := &segment{
		base: base, size: segmentHeaderSize, visible: segmentHeaderSize,
		synced: segmentHeaderSize, last: base - 1, syncedLast: base - 1,
		path: filepath.Join(l.dir, segmentName(base)),
	}
	l.mu.Lock()
	l.segs = append(l.segs, seg)
	l.diskBytes += segmentHeaderSize
	l.mu.Unlock()
	l.w.active, l.w.seg = f, seg
	l.logger.Debug("new segment", "segment", base)
	select {
	case l.ckKick <- struct{}{}:
	default:
	}
	return nil
}

// OnSync makes the writer call f with the duration of every fsync of segment
// data (group commits, and the periodic ones under sync "interval"), for
// metrics: an fsync's time is the floor of every acknowledgement it covers.
// f runs on the writer goroutine, so it must be quick. nil stops the calls.
func (l *Log) OnSync(f func(took time.Duration)) {
	if f == nil {
		l.onSync.Store(nil)
		return
	}
	l.onSync.Store(&f)
}

// datasync fsyncs the active segment's data and reports how long it took.
func (l *Log) datasync() error {
	f := l.onSync.Load()
	if f == nil {
		return datasync(l.w.active)
	}
	start := time.Now()
	err := datasync(l.w.active)
	if err == nil {
		(*f)(time.Since(start))
	}
	return err
}
