package buffer

import (
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

var _ gateway.Buffer = (*Log)(nil)

// Log is the durable on-disk log. It is safe for concurrent use: Append from
// any number of goroutines, Read and Commit from one consumer.
type Log struct {
	opts   Options
	logger *slog.Logger
	dir    string
	lock   *os.File

	// mu guards the fields below it. Nothing holding it does file I/O.
	mu        sync.Mutex
	closed    bool
	queue     []byte   // encoded frames waiting for the writer
	queueRecs []queued // one per frame in queue, same order
	writing   int64    // bytes the writer took from queue and has not finished
	// queueAt is when the first frame in queue was appended (Unix ns):
	// every frame of a group commit carries it, one clock read per batch
	// instead of one per record (three per MQTT publish were 4% of the
	// gateway's CPU). It is at most one group commit older than a
	// record's own time, so OldestUnsent errs older, never younger.
	queueAt int64
	// failErr and failUntil hold back appends for failHold after a failed
	// write (see flush).
	failErr     error
	failUntil   time.Time
	diskBytes   int64 // sum of segment sizes
	segs        []*segment
	lastVisible uint64 // the last offset Read may return
	commit      uint64
	hint        mark          // a frame boundary at or before record commit+1
	marks       []mark        // where each Read batch ended, oldest first
	visibleCh   chan struct{} // closed (and replaced) when records become visible, and by Close
	oldest      oldestCache

	ckDone checkpoint // what the checkpoint file holds; owned by the checkpointer

	wake     chan struct{} // wakes the writer; capacity 1
	ckKick   chan struct{} // wakes the checkpointer; capacity 1
	stop     chan struct{} // closed by Close to stop the checkpointer
	done     chan struct{} // closed when Close finished
	wg       sync.WaitGroup
	closing  sync.Once
	closeErr error

	// Owned by the writer goroutine.
	w writerState

	// readMu serialises Read (and its reader state) with Close.
	readMu sync.Mutex
	// slabPool holds read slabs given back by RecycleSlabs (*[]byte).
	slabPool sync.Pool
	rd       reader

	stats counters
	// onSync, when set, hears how long each fsync of segment data took.
	onSync atomic.Pointer[func(time.Duration)]
}

// queued is one accepted record waiting for the writer.
type queued struct {
	size    int // frame size in queue
	dataCRC uint32
	done    func(error)
	doneOff func(gateway.Offset, error) // used by tests to learn offsets
}

// mark is a frame boundary in a segment: the record at (seg, pos) has an
// offset greater than off.
type mark struct {
	off uint64
	seg uint64
	pos int64
}

// maxMarks bounds the Read batches remembered for commit positions. When a
// consumer reads further ahead than this without committing, older marks
// are dropped and the commit position gets less precise, never wrong.
const maxMarks = 1024

type counters struct {
	fsyncs        atomic.Uint64
	syncedRecords atomic.Uint64
	corrupt       atomic.Uint64
	rejectedFull  atomic.Uint64
	writeErrors   atomic.Uint64
	slabReuses    atomic.Uint64 // Read slabs taken from RecycleSlabs' pool
}

// Open opens (creating if needed) the log in opts.Dir, recovers it (see
// doc.go) and starts its writer. Zero option fields get their defaults. A
// nil logger discards.
func Open(opts Options, logger *slog.Logger) (*Log, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("buffer.dir: %w", err)
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		opts:      opts,
		logger:    logger.With("component", "buffer"),
		dir:       opts.Dir,
		lock:      lock,
		visibleCh: make(chan struct{}),
		wake:      make(chan struct{}, 1),
		ckKick:    make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	l.rd.sc = newScanner(scanBufferSize)
	if err := l.recover(); err != nil {
		if l.w.active != nil {
			l.w.active.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("open buffer %s: %w", opts.Dir, err)
	}
	l.wg.Add(2)
	go l.runWriter()
	go l.runCheckpointer()
	return l, nil
}

// Append queues data to be written and returns at once; see gateway.Buffer.
// Besides ErrFull and ErrClosed it returns ErrTooLarge, also without calling
// done. data may be reused by the caller as soon as Append returns.
func (l *Log) Append(data []byte, done func(error)) error {
	return l.append(data, done, nil)
}

func (l *Log) append(data []byte, done func(error), doneOff func(gateway.Offset, error)) error {
	if len(data) > int(l.opts.MaxRecordBytes) {
		return fmt.Errorf("%w: %d bytes, the limit is %s", ErrTooLarge, len(data), l.opts.MaxRecordBytes)
	}
	dataCRC := crc32.Checksum(data, castagnoli)
	size := frameSize(len(data))

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.failErr != nil && time.Now().Before(l.failUntil) {
		err := l.failErr
		l.mu.Unlock()
		l.stats.rejectedFull.Add(1)
		return fmt.Errorf("%w: the last write failed: %w", ErrFull, err)
	}
	pending := int64(len(l.queue)) + l.writing
	if l.diskBytes+pending+int64(size) > int64(l.opts.MaxBytes) ||
		int64(len(l.queue)+size) > int64(l.opts.MaxQueueBytes) {
		l.mu.Unlock()
		l.stats.rejectedFull.Add(1)
		return ErrFull
	}
	if len(l.queueRecs) == 0 {
		l.queueAt = time.Now().UnixNano()
	}
	start := len(l.queue)
	if cap(l.queue)-start < size {
		grown := make([]byte, start, max(2*cap(l.queue), start+size, 64<<10))
		copy(grown, l.queue)
		l.queue = grown
	}
	l.queue = l.queue[:start+size]
	putFrameHeader(l.queue[start:], len(data), 0, l.queueAt)
	copy(l.queue[start+frameHeaderSize:], data)
	l.queueRecs = append(l.queueRecs, queued{size: size, dataCRC: dataCRC, done: done, doneOff: doneOff})
	first := len(l.queueRecs) == 1
	l.mu.Unlock()

	if first {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Commit records that every record up to and including off was delivered;
// see gateway.Buffer. The cursor reaches the disk within cursor_interval,
// and segments whose records are all committed are deleted soon after.
func (l *Log) Commit(off gateway.Offset) error {
	o := uint64(off)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if o <= l.commit {
		l.mu.Unlock()
		return nil
	}
	if o > l.lastVisible {
		last := l.lastVisible
		l.mu.Unlock()
		return fmt.Errorf("commit %d: %w: the last durable offset is %d", o, ErrOffsetOutOfRange, last)
	}
	l.commit = o
	i := 0
	for i < len(l.marks) && l.marks[i].off <= o {
		l.hint = l.marks[i]
		i++
	}
	l.marks = l.marks[i:]
	freeable := len(l.segs) > 1 && l.segs[1].base-1 <= o
	l.mu.Unlock()

	if freeable {
		select {
		case l.ckKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Close stops accepting appends, writes and syncs what was queued, calls
// every pending done callback, persists the commit cursor and releases the
// directory. It is safe to call more than once; later calls wait for the
// first and return its result.
func (l *Log) Close() error {
	l.closing.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.visibleCh) // wakes blocked Reads, which see closed
		l.mu.Unlock()
		select {
		case l.wake <- struct{}{}:
		default:
		}
		close(l.stop)
		l.wg.Wait()

		// The writer has drained the queue and synced: a final checkpoint
		// makes the next Open scan nothing and redeliver nothing committed.
		errs := []error{l.checkpointAndFree()}
		l.readMu.Lock()
		if l.rd.f != nil {
			errs = append(errs, l.rd.f.Close())
			l.rd.f = nil
		}
		l.readMu.Unlock()
		if l.w.active != nil {
			errs = append(errs, l.w.active.Close())
		}
		errs = append(errs, l.lock.Close())
		l.closeErr = errors.Join(errs...)
		close(l.done)
	})
	<-l.done
	return l.closeErr
}

// segmentIndex returns the index of the segment holding offset off: the last
// one whose base is at most off, or 0 when off precedes every segment.
// l.mu must be held.
func (l *Log) segmentIndex(off uint64) int {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > off })
	return max(i-1, 0)
}

// segmentByBase returns the segment with that base, or nil if it was
// deleted. l.mu must be held.
func (l *Log) segmentByBase(base uint64) (int, *segment) {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base >= base })
	if i < len(l.segs) && l.segs[i].base == base {
		return i, l.segs[i]
	}
	return i, nil
}

// publishLocked makes everything the writer finished visible to Read and
// wakes blocked readers. l.mu must be held.
func (l *Log) publishLocked(last uint64) {
	if last <= l.lastVisible {
		return
	}
	l.lastVisible = last
	if !l.closed {
		close(l.visibleCh)
		l.visibleCh = make(chan struct{})
	}
}
