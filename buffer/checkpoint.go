package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Checkpoint file layout (little endian), see doc.go:
//
//	0  [8]byte "IOTGWCKP"
//	8  uint16  checkpoint format version (checkpointVersion)
//	10 [6]byte reserved, 0
//	16 uint64  commit: every offset up to and including it was delivered
//	24 uint64  commitSegment: base of the segment holding commitPos
//	32 int64   commitPos: a frame boundary at or before record commit+1
//	40 uint64  tailSegment: base of the segment tailPos refers to
//	48 int64   tailPos: every byte before it in that segment was fsynced
//	56 uint64  tailNext: the offset of the record at tailPos
//	64 uint32  CRC-32C of bytes 0..63
const (
	checkpointName    = "checkpoint"
	checkpointSize    = 68
	checkpointVersion = 1
	checkpointMagic   = "IOTGWCKP"
)

// checkpoint is what the log persists besides the segments: the commit
// cursor, and how far the last segment is known to be durable so that
// recovery scans only past that point.
type checkpoint struct {
	commit        uint64
	commitSegment uint64
	commitPos     int64
	tailSegment   uint64
	tailPos       int64
	tailNext      uint64
}

func (c checkpoint) encode() []byte {
	b := make([]byte, checkpointSize)
	copy(b, checkpointMagic)
	binary.LittleEndian.PutUint16(b[8:10], checkpointVersion)
	binary.LittleEndian.PutUint64(b[16:24], c.commit)
	binary.LittleEndian.PutUint64(b[24:32], c.commitSegment)
	binary.LittleEndian.PutUint64(b[32:40], uint64(c.commitPos))
	binary.LittleEndian.PutUint64(b[40:48], c.tailSegment)
	binary.LittleEndian.PutUint64(b[48:56], uint64(c.tailPos))
	binary.LittleEndian.PutUint64(b[56:64], c.tailNext)
	binary.LittleEndian.PutUint32(b[64:68], crc32.Checksum(b[:64], castagnoli))
	return b
}

var errBadCheckpoint = &corruptError{"bad checkpoint"}

func decodeCheckpoint(b []byte) (checkpoint, error) {
	if len(b) != checkpointSize || string(b[:8]) != checkpointMagic ||
		crc32.Checksum(b[:64], castagnoli) != binary.LittleEndian.Uint32(b[64:68]) {
		return checkpoint{}, errBadCheckpoint
	}
	if v := binary.LittleEndian.Uint16(b[8:10]); v != checkpointVersion {
		return checkpoint{}, fmt.Errorf("%w: checkpoint version %d, this build reads %d", ErrFormat, v, checkpointVersion)
	}
	return checkpoint{
		commit:        binary.LittleEndian.Uint64(b[16:24]),
		commitSegment: binary.LittleEndian.Uint64(b[24:32]),
		commitPos:     int64(binary.LittleEndian.Uint64(b[32:40])),
		tailSegment:   binary.LittleEndian.Uint64(b[40:48]),
		tailPos:       int64(binary.LittleEndian.Uint64(b[48:56])),
		tailNext:      binary.LittleEndian.Uint64(b[56:64]),
	}, nil
}

// readCheckpoint returns the checkpoint in dir; found is false when there is
// none.
func readCheckpoint(dir string) (c checkpoint, found bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, checkpointName))
	if errors.Is(err, fs.ErrNotExist) {
		return checkpoint{}, false, nil
	}
	if err != nil {
		return checkpoint{}, false, err
	}
	c, err = decodeCheckpoint(b)
	return c, err == nil, err
}

// writeCheckpoint replaces the checkpoint atomically: write a temporary
// file, fsync it, rename it over the old one, fsync the directory.
func writeCheckpoint(dir string, c checkpoint) error {
	tmp := filepath.Join(dir, checkpointName+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	_, err = f.Write(c.encode())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, checkpointName))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return syncDir(dir)
}

// runCheckpointer persists the checkpoint every cursor_interval when it
// changed, and deletes segments as soon as every record in them is
// committed.
func (l *Log) runCheckpointer() {
	defer l.wg.Done()
	t := time.NewTicker(l.opts.CursorInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-l.ckKick:
		}
		err := l.checkpointAndFree()
		if err != nil && !failing {
			l.logger.Error("cannot persist the commit cursor; after a crash more records will be delivered again", "error", err)
		} else if err == nil && failing {
			l.logger.Info("commit cursor persisted again")
		}
		failing = err != nil
	}
}

// checkpointAndFree writes the checkpoint if it changed, then deletes the
// segments whose records are all committed. Deleting before the cursor is
// on disk is safe: recovery starts at the first segment left, and every
// record before it was committed.
func (l *Log) checkpointAndFree() error {
	l.mu.Lock()
	ck := checkpoint{commit: l.commit}
	if l.hint.seg != 0 {
		ck.commitSegment, ck.commitPos = l.hint.seg, l.hint.pos
	}
	tail := l.segs[len(l.segs)-1]
	ck.tailSegment, ck.tailPos, ck.tailNext = tail.base, tail.synced, tail.syncedLast+1
	var free []*segment
	for len(l.segs) > 1 && l.segs[1].base-1 <= l.commit {
		free = append(free, l.segs[0])
		l.diskBytes -= l.segs[0].size
		l.segs[0] = nil
		l.segs = l.segs[1:]
	}
	l.mu.Unlock()

	var errs []error
	if ck != l.ckDone {
		if err := writeCheckpoint(l.dir, ck); err != nil {
			errs = append(errs, err)
		} else {
			l.ckDone = ck
		}
	}
	for _, s := range free {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete committed segment %d: %w", s.base, err))
		}
		l.logger.Debug("deleted committed segment", "segment", s.base)
	}
	if len(free) > 0 {
		if err := syncDir(l.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
