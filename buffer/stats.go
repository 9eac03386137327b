package buffer

import (
	"encoding/binary"
	"os"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// Stats is a snapshot of the log's state and counters. Counters count since
// Open.
type Stats struct {
	// Records is the depth: durable records not yet committed.
	Records int64 `json:"records"`
	// Bytes is the depth in bytes on disk (frames of uncommitted records).
	// When commits land in the middle of a Read batch it may include up to
	// one batch of committed records.
	Bytes int64 `json:"bytes"`
	// DiskBytes is the size of all segment files, committed records in
	// segments not yet deleted included. DiskBytes plus QueuedBytes is what
	// max_bytes caps.
	DiskBytes int64 `json:"disk_bytes"`
	// QueuedBytes is accepted by Append and not yet written.
	QueuedBytes int64 `json:"queued_bytes"`
	// Segments is the number of segment files.
	Segments int `json:"segments"`
	// LastOffset is the last durable offset (0 when nothing was ever
	// appended); CommitOffset the commit cursor.
	LastOffset   gateway.Offset `json:"last_offset"`
	CommitOffset gateway.Offset `json:"commit_offset"`
	// OldestUnsent is when the oldest uncommitted record was appended; zero
	// when there is none.
	OldestUnsent time.Time `json:"oldest_unsent"`

	// Fsyncs counts successful fsyncs of segment data; SyncedRecords the
	// records they made durable. RecordsPerFsync is their ratio, the group
	// commit factor.
	Fsyncs          uint64  `json:"fsyncs"`
	SyncedRecords   uint64  `json:"synced_records"`
	RecordsPerFsync float64 `json:"records_per_fsync"`
	// CorruptSkipped counts records Read skipped because their bytes were
	// damaged or missing.
	CorruptSkipped uint64 `json:"corrupt_skipped"`
	// RejectedFull counts Appends that returned ErrFull.
	RejectedFull uint64 `json:"rejected_full"`
	// WriteErrors counts failed writes and fsyncs (each failed the records
	// it carried).
	WriteErrors uint64 `json:"write_errors"`
}

// OldestUnsentAge is how long the oldest uncommitted record has waited at
// now; zero when there is none.
func (s Stats) OldestUnsentAge(now time.Time) time.Duration {
	if s.OldestUnsent.IsZero() {
		return 0
	}
	return now.Sub(s.OldestUnsent)
}

// oldestCache remembers the append time of record commit+1 so that Stats
// reads the disk only when the commit cursor moved.
type oldestCache struct {
	commit uint64
	valid  bool
	at     time.Time
}

// Stats returns a snapshot. It reads at most a few frame headers from disk
// (to learn the oldest record's append time) and never blocks on appends.
func (l *Log) Stats() Stats {
	s := Stats{
		Fsyncs:         l.stats.fsyncs.Load(),
		SyncedRecords:  l.stats.syncedRecords.Load(),
		CorruptSkipped: l.stats.corrupt.Load(),
		RejectedFull:   l.stats.rejectedFull.Load(),
		WriteErrors:    l.stats.writeErrors.Load(),
	}
	if s.Fsyncs > 0 {
		s.RecordsPerFsync = float64(s.SyncedRecords) / float64(s.Fsyncs)
	}

	l.mu.Lock()
	s.QueuedBytes = int64(len(l.queue)) + l.writing
	s.DiskBytes = l.diskBytes
	s.Segments = len(l.segs)
	s.LastOffset = gateway.Offset(l.lastVisible)
	s.CommitOffset = gateway.Offset(l.commit)
	closed := l.closed
	if l.lastVisible <= l.commit {
		l.mu.Unlock()
		return s
	}
	s.Records = int64(l.lastVisible - l.commit)
	i := l.segmentIndex(l.commit + 1)
	pos := int64(segmentHeaderSize)
	if h := l.hint; h.seg == l.segs[i].base && h.pos > pos && h.pos <= l.segs[i].visible {
		pos = h.pos
	}
	s.Bytes = l.segs[i].visible - pos
	for _, seg := range l.segs[i+1:] {
		s.Bytes += seg.visible - segmentHeaderSize
	}
	commit, path, end := l.commit, l.segs[i].path, l.segs[i].visible
	cache := l.oldest
	l.mu.Unlock()

	if cache.valid && cache.commit == commit {
		s.OldestUnsent = cache.at
		return s
	}
	if closed {
		return s
	}
	if at, ok := oldestAppendTime(path, pos, end, commit); ok {
		s.OldestUnsent = at
		l.mu.Lock()
		l.oldest = oldestCache{commit: commit, valid: true, at: at}
		l.mu.Unlock()
	}
	return s
}

// oldestScanFrames bounds the frame headers Stats reads to find the oldest
// uncommitted record; past it Stats reports an older record's time.
const oldestScanFrames = 64

// oldestAppendTime reads frame headers from pos (a frame boundary at or
// before record commit+1) up to end and returns the append time of the
// first record past commit, or of the last record it read when the bound
// stopped it.
func oldestAppendTime(path string, pos, end int64, commit uint64) (time.Time, bool) {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	var hdr [frameHeaderSize]byte
	var at time.Time
	for range oldestScanFrames {
		if pos+frameHeaderSize > end {
			break
		}
		if _, err := f.ReadAt(hdr[:], pos); err != nil {
			break
		}
		n, off, ok := frameHeaderOK(hdr[:])
		if !ok {
			break
		}
		at = time.Unix(0, int64(binary.LittleEndian.Uint64(hdr[20:28])))
		if off > commit {
			return at, true
		}
		pos += int64(frameHeaderSize + n)
	}
	return at, !at.IsZero()
}
