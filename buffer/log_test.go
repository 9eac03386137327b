package buffer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// testOptions returns small, fast options for dir.
func testOptions(dir string) Options {
	return Options{
		Dir:            dir,
		SegmentBytes:   64 << 10,
		MaxBytes:       4 << 20,
		MaxRecordBytes: 16 << 10,
		MaxQueueBytes:  1 << 20,
		CursorInterval: 20 * time.Millisecond,
	}
}

// testLogger logs to the test's output when BUFFER_TEST_LOG is set, and
// discards otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("BUFFER_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func openTest(t testing.TB, opts Options) *Log {
	t.Helper()
	l, err := Open(opts, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// appendWait appends data and waits for its done callback.
func appendWait(t testing.TB, l *Log, data []byte) error {
	t.Helper()
	ch := make(chan error, 1)
	if err := l.Append(data, func(err error) { ch <- err }); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("done not called within 10s")
		return nil
	}
}

// readN reads until it has n records or the deadline passes.
func readN(t testing.TB, l *Log, n int) []gateway.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []gateway.Entry
	for len(out) < n {
		es, err := l.Read(ctx, n-len(out), 1<<30)
		if err != nil {
			t.Fatalf("Read after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, es...)
	}
	return out
}

// readNone asserts that no record is readable within a short wait.
func readNone(t testing.TB, l *Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	es, err := l.Read(ctx, 100, 1<<30)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read = %d records, %v; want nothing (deadline exceeded)", len(es), err)
	}
}

func payload(i int) []byte { return []byte(fmt.Sprintf("record-%06d", i)) }

func TestAppendReadCommitReopen(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, testOptions(dir))
	const n = 500
	for i := range n {
		if err := appendWait(t, l, payload(i)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	es := readN(t, l, n)
	for i, e := range es {
		if e.Offset != gateway.Offset(i+1) || !bytes.Equal(e.Data, payload(i)) {
			t.Fatalf("entry %d = (%d, %q), want (%d, %q)", i, e.Offset, e.Data, i+1, payload(i))
		}
	}
	readNone(t, l)
	if err := l.Commit(200); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l2 := openTest(t, testOptions(dir))
	es = readN(t, l2, n-200)
	if es[0].Offset != 201 || !bytes.Equal(es[0].Data, payload(200)) {
		t.Fatalf("first after reopen = (%d, %q), want (201, %q)", es[0].Offset, es[0].Data, payload(200))
	}
	if last := es[len(es)-1]; last.Offset != n {
		t.Fatalf("last after reopen = %d, want %d", last.Offset, n)
	}
	readNone(t, l2)
	// Offsets continue after the old ones.
	if err := appendWait(t, l2, []byte("after")); err != nil {
		t.Fatal(err)
	}
	es = readN(t, l2, 1)
	if es[0].Offset != n+1 {
		t.Fatalf("offset after reopen = %d, want %d", es[0].Offset, n+1)
	}
}

func TestConcurrentAppendersKeepPerAppenderOrder(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	const appenders, each = 16, 300
	var wg sync.WaitGroup
	var failed atomic.Int64
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Several in flight per appender, like an MQTT connection.
			var inner sync.WaitGroup
			for i := range each {
				inner.Add(1)
				err := l.Append([]byte(fmt.Sprintf("%02d:%06d", a, i)), func(err error) {
					if err != nil {
						failed.Add(1)
					}
					inner.Done()
				})
				if err != nil {
					t.Errorf("append: %v", err)
					inner.Done()
				}
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d appends failed", failed.Load())
	}
	es := readN(t, l, appenders*each)
	next := make([]int, appenders)
	for i, e := range es {
		if e.Offset != gateway.Offset(i+1) {
			t.Fatalf("entry %d has offset %d", i, e.Offset)
		}
		var a, seq int
		if _, err := fmt.Sscanf(string(e.Data), "%d:%d", &a, &seq); err != nil {
			t.Fatalf("bad data %q", e.Data)
		}
		if seq != next[a] {
			t.Fatalf("appender %d: got seq %d, want %d", a, seq, next[a])
		}
		next[a]++
	}
	// Group commit: the appends queued while one fsync ran share the next.
	st := l.Stats()
	if st.SyncedRecords != appenders*each || st.RecordsPerFsync < 4 {
		t.Fatalf("%d records in %d fsyncs (%.1f per fsync), want all %d at 4 or more per fsync",
			st.SyncedRecords, st.Fsyncs, st.RecordsPerFsync, appenders*each)
	}
}

func TestDoneCallbacksInAppendOrderWithOffsets(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	var mu sync.Mutex
	var got []gateway.Offset
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Add(1)
		err := l.append(payload(i), nil, func(off gateway.Offset, err error) {
			if err != nil {
				t.Errorf("done: %v", err)
			}
			mu.Lock()
			got = append(got, off)
			mu.Unlock()
			wg.Done()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for i, off := range got {
		if off != gateway.Offset(i+1) {
			t.Fatalf("callback %d got offset %d, want %d", i, off, i+1)
		}
	}
}

func TestReadLimits(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	for i := range 10 {
		if err := appendWait(t, l, bytes.Repeat([]byte{byte('a' + i)}, 100)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	tests := []struct {
		name                 string
		maxRecords, maxBytes int
		want                 int
	}{
		{"max records", 3, 1 << 20, 3},
		{"max bytes", 100, 250, 2},
		{"at least one", 100, 10, 1},
		{"zero records means one", 0, 1 << 20, 1},
		{"rest", 100, 1 << 20, 3},
	}
	next := gateway.Offset(1)
	for _, tc := range tests {
		es, err := l.Read(ctx, tc.maxRecords, tc.maxBytes)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(es) != tc.want {
			t.Fatalf("%s: got %d records, want %d", tc.name, len(es), tc.want)
		}
		for _, e := range es {
			if e.Offset != next {
				t.Fatalf("%s: offset %d, want %d", tc.name, e.Offset, next)
			}
			next++
		}
	}
}

func TestReadBlocksUntilAppendAndHonoursContext(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.Read(ctx, 10, 1<<20)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Read = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read did not return after cancel")
	}

	got := make(chan []gateway.Entry, 1)
	go func() {
		es, err := l.Read(context.Background(), 10, 1<<20)
		if err != nil {
			t.Error(err)
		}
		got <- es
	}()
	if err := appendWait(t, l, []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case es := <-got:
		if len(es) != 1 || string(es[0].Data) != "x" {
			t.Fatalf("Read = %v", es)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked Read did not see the append")
	}
}

func TestClose(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	readErr := make(chan error, 1)
	go func() {
		_, err := l.Read(context.Background(), 1, 1)
		readErr <- err
	}()
	// Queue many appends and close at once: each done is called exactly once.
	const n = 2000
	var calls [n]atomic.Int32
	var okCount atomic.Int32
	accepted := 0
	for i := range n {
		err := l.Append(payload(i), func(err error) {
			calls[i].Add(1)
			if err == nil {
				okCount.Add(1)
			}
		})
		if err == nil {
			accepted++
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i := range accepted {
		if c := calls[i].Load(); c != 1 {
			t.Fatalf("done %d called %d times", i, c)
		}
	}
	select {
	case err := <-readErr:
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Read = %v, want records or ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked Read did not return on Close")
	}
	if err := l.Append([]byte("x"), func(error) { t.Error("done called after Close") }); !errors.Is(err, gateway.ErrClosed) {
		t.Fatalf("Append after Close = %v", err)
	}
	if _, err := l.Read(context.Background(), 1, 1); !errors.Is(err, gateway.ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	if err := l.Commit(1); !errors.Is(err, gateway.ErrClosed) {
		t.Fatalf("Commit after Close = %v", err)
	}

	// Everything acknowledged survives.
	l2 := openTest(t, testOptions(l.dir))
	es := readN(t, l2, int(okCount.Load()))
	for i, e := range es {
		if !bytes.Equal(e.Data, payload(i)) {
			t.Fatalf("record %d = %q, want %q", i, e.Data, payload(i))
		}
	}
}

func TestAppendErrors(t *testing.T) {
	opts := testOptions(t.TempDir())
	l := openTest(t, opts)
	err := l.Append(make([]byte, opts.MaxRecordBytes+1), func(error) { t.Error("done called for a rejected record") })
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Append too large = %v, want ErrTooLarge", err)
	}
	if err := appendWait(t, l, make([]byte, opts.MaxRecordBytes)); err != nil {
		t.Fatalf("Append of max_record_bytes: %v", err)
	}
	if err := appendWait(t, l, nil); err != nil {
		t.Fatalf("Append of empty record: %v", err)
	}
	es := readN(t, l, 2)
	if len(es[0].Data) != int(opts.MaxRecordBytes) || len(es[1].Data) != 0 {
		t.Fatalf("read back sizes %d, %d", len(es[0].Data), len(es[1].Data))
	}
	if err := l.Commit(3); !errors.Is(err, ErrOffsetOutOfRange) {
		t.Fatalf("Commit past the end = %v, want ErrOffsetOutOfRange", err)
	}
	if err := l.Commit(0); err != nil {
		t.Fatalf("Commit(0) = %v", err)
	}
}

func TestFullAndFreedBySegmentDeletion(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.SegmentBytes = 16 << 10
	opts.MaxBytes = 64 << 10
	opts.MaxRecordBytes = 4 << 10
	l := openTest(t, opts)
	rec := bytes.Repeat([]byte("z"), 1000)
	n := 0
	for {
		err := appendWait(t, l, rec)
		if errors.Is(err, gateway.ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n > 1000 {
			t.Fatal("never full")
		}
	}
	st := l.Stats()
	if st.RejectedFull != 1 || st.DiskBytes > int64(opts.MaxBytes) || st.DiskBytes < int64(opts.MaxBytes)-2*int64(frameSize(len(rec))) {
		t.Fatalf("after ErrFull: %d records, stats %+v", n, st)
	}
	if st.Records != int64(n) || st.Segments < 4 {
		t.Fatalf("depth %d records in %d segments, want %d records in at least 4", st.Records, st.Segments, n)
	}
	es := readN(t, l, n)
	if err := l.Commit(es[len(es)-1].Offset); err != nil {
		t.Fatal(err)
	}
	// The checkpointer deletes the committed segments; then there is room.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := appendWait(t, l, rec)
		if err == nil {
			break
		}
		if !errors.Is(err, gateway.ErrFull) || time.Now().After(deadline) {
			t.Fatalf("append after commit: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	st = l.Stats()
	if st.Segments > 2 || st.Records != 1 {
		t.Fatalf("after commit: %+v", st)
	}
	// The files go right after the segments leave the list.
	for {
		segs, _ := filepath.Glob(filepath.Join(opts.Dir, "*.seg"))
		if len(segs) == st.Segments {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d segment files, stats say %d", len(segs), st.Segments)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSegmentsRollAndReadAcross(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.SegmentBytes = 4 << 10
	opts.MaxRecordBytes = 1 << 10
	l := openTest(t, opts)
	const n = 400
	for i := range n {
		if err := appendWait(t, l, bytes.Repeat(payload(i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	st := l.Stats()
	if st.Segments < 10 {
		t.Fatalf("only %d segments", st.Segments)
	}
	// Read in small batches across segment boundaries, committing as we go.
	got := 0
	for got < n {
		es, err := l.Read(context.Background(), 7, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if !bytes.Equal(e.Data, bytes.Repeat(payload(got), 10)) {
				t.Fatalf("record %d wrong", got)
			}
			got++
		}
		if err := l.Commit(es[len(es)-1].Offset); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l2 := openTest(t, opts)
	if st := l2.Stats(); st.Records != 0 || st.Segments != 1 {
		t.Fatalf("after reopen: %+v", st)
	}
	readNone(t, l2)
}

func TestSyncInterval(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.Sync = SyncInterval
	opts.SyncInterval = 5 * time.Millisecond
	l := openTest(t, opts)
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Add(1)
		if err := l.Append(payload(i), func(err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	es := readN(t, l, 300)
	if es[299].Offset != 300 {
		t.Fatalf("last offset %d", es[299].Offset)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().SyncedRecords != 300 {
		if time.Now().After(deadline) {
			t.Fatalf("records never synced: %+v", l.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

// Under a steady stream of appends the writer never goes idle; the
// interval fsync must still happen.
func TestSyncIntervalUnderSteadyLoad(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.Sync = SyncInterval
	opts.SyncInterval = 5 * time.Millisecond
	l := openTest(t, opts)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := l.Append(payload(i), func(error) {}); err != nil && !errors.Is(err, ErrFull) {
					t.Error(err)
					return
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Fsyncs < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d fsyncs in 5s of steady appends with sync_interval 5ms", l.Stats().Fsyncs)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestStatsDepthAndOldest(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	if st := l.Stats(); st.Records != 0 || !st.OldestUnsent.IsZero() || st.Bytes != 0 {
		t.Fatalf("empty: %+v", st)
	}
	before := time.Now()
	var fifthDone time.Time
	for i := range 10 {
		if err := appendWait(t, l, payload(i)); err != nil {
			t.Fatal(err)
		}
		if i == 4 {
			fifthDone = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
	}
	st := l.Stats()
	recBytes := int64(frameSize(len(payload(0))))
	if st.Records != 10 || st.Bytes != 10*recBytes {
		t.Fatalf("depth %d records, %d bytes; want 10, %d", st.Records, st.Bytes, 10*recBytes)
	}
	if st.OldestUnsent.Before(before) || st.OldestUnsent.After(fifthDone) {
		t.Fatalf("oldest %v, want the first record's time, between %v and %v", st.OldestUnsent, before, fifthDone)
	}
	readN(t, l, 5)
	if err := l.Commit(5); err != nil {
		t.Fatal(err)
	}
	st = l.Stats()
	if st.Records != 5 || st.Bytes != 5*recBytes {
		t.Fatalf("depth after commit %d records, %d bytes; want 5, %d", st.Records, st.Bytes, 5*recBytes)
	}
	if !st.OldestUnsent.After(fifthDone) {
		t.Fatalf("oldest after commit %v is not the 6th record's time (appended after %v)", st.OldestUnsent, fifthDone)
	}
}

func TestOpenLockedDir(t *testing.T) {
	dir := t.TempDir()
	openTest(t, testOptions(dir))
	_, err := Open(testOptions(dir), nil)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Options)
		want   string // substring of the error; empty for valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"no dir", func(o *Options) { o.Dir = "" }, "buffer.dir: required"},
		{"bad sync", func(o *Options) { o.Sync = "sometimes" }, `buffer.sync: must be "always" or "interval"`},
		{"tiny segment", func(o *Options) { o.SegmentBytes = 100 }, "buffer.segment_bytes: must be at least 4KiB"},
		{"max below two segments", func(o *Options) { o.MaxBytes = 100 << 20 }, "buffer.max_bytes: must be at least twice"},
		{"record too big for segment", func(o *Options) { o.SegmentBytes = 1 << 20 }, "buffer.max_record_bytes"},
		{"queue smaller than record", func(o *Options) { o.MaxQueueBytes = 1000 }, "buffer.max_queue_bytes"},
		{"interval too short", func(o *Options) { o.Sync = SyncInterval; o.SyncInterval = time.Microsecond }, "buffer.sync_interval"},
		{"negative cursor interval", func(o *Options) { o.CursorInterval = -time.Second }, "buffer.cursor_interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.Dir = "/somewhere"
			tc.modify(&o)
			err := o.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
	d := DefaultOptions()
	if d.MaxBytes != 1<<30 || d.SegmentBytes != 64<<20 || d.Sync != SyncAlways || d.SyncInterval != 10*time.Millisecond || d.MaxRecordBytes != 1<<20 {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestOpenCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	openTest(t, testOptions(dir))
	if _, err := os.Stat(filepath.Join(dir, segmentName(1))); err != nil {
		t.Fatalf("first segment: %v", err)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// A backlog lives on disk: memory does not grow with it, neither while it
// builds up nor while it is read.
func TestMemoryDoesNotGrowWithBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 48MiB")
	}
	opts := testOptions(t.TempDir())
	opts.MaxBytes = 256 << 20
	opts.SegmentBytes = 8 << 20
	opts.MaxRecordBytes = 4 << 10
	opts.Sync = SyncInterval // the memory is the same; the test is faster
	l := openTest(t, opts)
	empty := heapInUse()

	const backlog = 48 << 20
	rec := bytes.Repeat([]byte("m"), 4<<10)
	for written := 0; written < backlog; {
		var wg sync.WaitGroup
		for range 512 {
			wg.Add(1)
			for {
				err := l.Append(rec, func(err error) {
					if err != nil {
						t.Error(err)
					}
					wg.Done()
				})
				if err == nil {
					break
				}
				if !errors.Is(err, ErrFull) {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond) // the queue cap, not the log's
			}
			written += len(rec)
		}
		wg.Wait()
	}
	full := heapInUse()
	if st := l.Stats(); st.Bytes < backlog {
		t.Fatalf("backlog is %d bytes, want at least %d", st.Bytes, backlog)
	}
	read := 0
	for read < backlog/len(rec) {
		es, err := l.Read(context.Background(), 1000, 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		read += len(es)
	}
	afterRead := heapInUse()
	t.Logf("heap in use: empty %.1fMiB, with 48MiB backlog %.1fMiB, after reading it %.1fMiB",
		float64(empty)/(1<<20), float64(full)/(1<<20), float64(afterRead)/(1<<20))
	const slack = 4 << 20
	if full-empty > slack || afterRead-empty > slack {
		t.Fatalf("memory grew with the backlog: empty %d, full %d, after read %d bytes", empty, full, afterRead)
	}
}

// OnSync hears of every fsync the stats count, under both policies, and
// stops hearing after OnSync(nil).
func TestOnSyncObservesEveryFsync(t *testing.T) {
	for _, policy := range []SyncPolicy{SyncAlways, SyncInterval} {
		t.Run(string(policy), func(t *testing.T) {
			opts := testOptions(t.TempDir())
			opts.Sync = policy
			opts.SyncInterval = 5 * time.Millisecond
			l := openTest(t, opts)
			var calls atomic.Uint64
			var total atomic.Int64
			l.OnSync(func(took time.Duration) {
				calls.Add(1)
				total.Add(int64(took))
			})
			for i := range 20 {
				if err := appendWait(t, l, payload(i)); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for l.Stats().SyncedRecords != 20 {
				if time.Now().After(deadline) {
					t.Fatalf("records never synced: %+v", l.Stats())
				}
				time.Sleep(time.Millisecond)
			}
			l.OnSync(nil)
			fsyncs := l.Stats().Fsyncs
			if got := calls.Load(); got != fsyncs || got == 0 {
				t.Fatalf("OnSync called %d times, stats count %d fsyncs", got, fsyncs)
			}
			if total.Load() <= 0 {
				t.Fatalf("fsyncs took %v in total", time.Duration(total.Load()))
			}
			if err := appendWait(t, l, payload(20)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			if got := calls.Load(); got != fsyncs {
				t.Fatalf("OnSync(nil): still called (%d times, was %d)", got, fsyncs)
			}
		})
	}
}
