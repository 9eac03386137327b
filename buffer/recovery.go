package buffer

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// recover loads the checkpoint and the segment list, repairs the tail of the
// last segment, and sets the writer's and the reader's starting points. See
// doc.go for what it does and why open time does not grow with the backlog.
func (l *Log) recover() error {
	ck, found, err := readCheckpoint(l.dir)
	if err != nil {
		if errors.Is(err, ErrFormat) {
			return err
		}
		l.logger.Warn("checkpoint unreadable; every record left in the log will be delivered again", "error", err)
		ck, found = checkpoint{}, false
	}
	if found {
		l.ckDone = ck
	}
	if err := os.Remove(filepath.Join(l.dir, checkpointName+".tmp")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	bases, err := listSegments(l.dir)
	if err != nil {
		return err
	}

	if len(bases) == 0 {
		base := max(1, ck.commit+1, ck.tailNext)
		f, err := createSegment(l.dir, base)
		if err != nil {
			return err
		}
		seg := newSegment(l.dir, base)
		l.w.active, l.w.seg, l.w.next = f, seg, base
		l.segs = []*segment{seg}
	} else {
		for i, base := range bases[:len(bases)-1] {
			seg, err := l.loadSealed(base, bases[i+1])
			if err != nil {
				return err
			}
			l.segs = append(l.segs, seg)
		}
		if err := l.recoverTail(bases[len(bases)-1], ck, found); err != nil {
			return err
		}
	}
	for _, s := range l.segs {
		l.diskBytes += s.size
	}

	// Offsets are never reused: if the log ends before offsets already
	// committed or known durable (lost data), continue after them.
	want := max(l.w.next, ck.commit+1)
	if found && ck.tailSegment == l.w.seg.base {
		want = max(want, ck.tailNext)
	}
	if want > l.w.next {
		l.logger.Warn("the log ends before offsets it already used; continuing after them", "last_offset", l.w.next-1, "next_offset", want)
		l.w.next = want
		if err := l.roll(); err != nil {
			return err
		}
	}
	l.commit = min(ck.commit, l.w.next-1)
	l.lastVisible = l.w.next - 1
	if found && ck.commitSegment != 0 {
		// The commit position is a frame boundary unless recovery cut the
		// segment shorter than it (records read and committed before a
		// power loss under sync "interval"): new frames will be written
		// there, so it must not be used.
		if _, seg := l.segmentByBase(ck.commitSegment); seg != nil && ck.commitPos <= seg.size {
			l.hint = mark{off: 0, seg: ck.commitSegment, pos: ck.commitPos}
		}
	}
	l.rd.next = l.commit + 1
	l.logger.Info("opened", "segments", len(l.segs), "first_offset", l.segs[0].base,
		"next_offset", l.w.next, "commit", l.commit, "bytes", l.diskBytes)
	return l.checkpointAndFree()
}

func newSegment(dir string, base uint64) *segment {
	return &segment{
		base: base, size: segmentHeaderSize, visible: segmentHeaderSize,
		synced: segmentHeaderSize, last: base - 1, syncedLast: base - 1,
		path: filepath.Join(dir, segmentName(base)),
	}
}

// loadSealed trusts a segment that is not the last one by its header and
// size: it was fsynced before the next one was created. Damage inside it is
// found, skipped and counted when it is read.
func (l *Log) loadSealed(base, nextBase uint64) (*segment, error) {
	path := filepath.Join(l.dir, segmentName(base))
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open segment %d: %w", base, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat segment %d: %w", base, err)
	}
	hdr := make([]byte, segmentHeaderSize)
	n, _ := f.ReadAt(hdr, 0)
	if err := checkSegmentHeader(hdr[:n], base); err != nil {
		if errors.Is(err, ErrFormat) {
			return nil, fmt.Errorf("segment %d: %w: upgrade iotgw or move %s away", base, err, l.dir)
		}
		l.logger.Warn("segment header damaged; its frames are read anyway", "segment", base, "error", err)
	}
	size := fi.Size()
	return &segment{
		base: base, size: size, visible: size, synced: size,
		last: nextBase - 1, syncedLast: nextBase - 1, path: path,
	}, nil
}

// recoverTail scans the last segment from the checkpointed durable position
// (or its start), keeps every valid frame, skips damage followed by valid
// frames, and truncates a torn or corrupt tail.
func (l *Log) recoverTail(base uint64, ck checkpoint, found bool) error {
	path := filepath.Join(l.dir, segmentName(base))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open segment %d: %w", base, err)
	}
	l.w.active = f // closed by Open on error
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment %d: %w", base, err)
	}
	size := fi.Size()
	hdr := make([]byte, segmentHeaderSize)
	n, _ := f.ReadAt(hdr, 0)
	if err := checkSegmentHeader(hdr[:n], base); err != nil {
		if errors.Is(err, ErrFormat) {
			return fmt.Errorf("segment %d: %w: upgrade iotgw or move %s away", base, err, l.dir)
		}
		// A crash while the segment was being created, or damage: the name
		// says what the header must say.
		l.logger.Warn("rewriting damaged header of the last segment", "segment", base, "error", err)
		if size < segmentHeaderSize {
			if err := f.Truncate(0); err != nil {
				return fmt.Errorf("repair segment %d: %w", base, err)
			}
			size = segmentHeaderSize
		}
		if _, err := f.WriteAt(encodeSegmentHeader(base), 0); err != nil {
			return fmt.Errorf("repair segment %d: %w", base, err)
		}
		if err := datasync(f); err != nil {
			return fmt.Errorf("repair segment %d: %w", base, err)
		}
	}

	start, next := int64(segmentHeaderSize), base
	if found && ck.tailSegment == base && ck.tailPos >= segmentHeaderSize && ck.tailPos <= size && ck.tailNext >= base {
		start, next = ck.tailPos, ck.tailNext
	}
	sc := newScanner(scanBufferSize)
	sc.reset(f, start, size)
	good := start
	for {
		before := sc.pos
		fr, err := sc.next()
		if err == io.EOF {
			break
		}
		if err == nil && fr.offset == next {
			next++
			good = sc.pos
			continue
		}
		if err == nil {
			// The writer numbers frames consecutively; a gap is explained
			// only by damaged bytes, which resync accounts for.
			sc.pos = before
			err = errFrameOrder
		}
		if !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("scan segment %d: %w", base, err)
		}
		bad := sc.pos
		ok, off, rerr := sc.resync(next, math.MaxUint64)
		if rerr != nil {
			return fmt.Errorf("scan segment %d: %w", base, rerr)
		}
		if !ok {
			break
		}
		next = off // the records in between are lost; Read counts them
		l.logger.Warn("damaged bytes inside the last segment; keeping the records after them",
			"segment", base, "position", bad, "resume_position", sc.pos, "error", err)
	}
	if good < size {
		l.logger.Warn("truncating torn tail of the last segment", "segment", base, "position", good, "bytes", size-good)
		if err := f.Truncate(good); err != nil {
			return fmt.Errorf("truncate segment %d: %w", base, err)
		}
		if err := datasync(f); err != nil {
			return fmt.Errorf("truncate segment %d: %w", base, err)
		}
	}
	seg := &segment{
		base: base, size: good, visible: good, synced: good,
		last: next - 1, syncedLast: next - 1, path: path,
	}
	l.w.seg, l.w.next = seg, next
	l.segs = append(l.segs, seg)
	return nil
}
