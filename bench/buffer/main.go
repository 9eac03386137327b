// Command buffer benchmarks iotgw's durable log (package buffer) against a
// plain write+fsync loop and against github.com/tidwall/wal driven the same
// way, on the same disk in one run, and prints a markdown table.
//
//	go run ./bench/buffer [-dir DIR] [-duration 2s]
//
// DIR defaults to a temporary directory under the working directory: /tmp
// may be a tmpfs, where fsync costs nothing and the numbers mean nothing.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/buffer"
	"github.com/tidwall/wal"
)

func main() {
	dir := flag.String("dir", "", "directory on the disk to measure (default: a temporary directory under the working directory)")
	duration := flag.Duration("duration", 2*time.Second, "how long one run of a case lasts; every case runs twice, interleaved with the others")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	only := flag.String("only", "", "run only the workloads whose label contains this, e.g. \"4096B, 64\" (for profiling)")
	flag.Parse()
	os.Exit(realMain(*dir, *duration, *cpuProfile, *only))
}

func realMain(dir string, d time.Duration, cpuProfile, only string) int {
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/buffer:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench/buffer:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(dir, d, only, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/buffer:", err)
		return 1
	}
	return 0
}

type workload struct {
	size, appenders, inFlight int
}

func (w workload) String() string {
	return fmt.Sprintf("%dB, %d × %d", w.size, w.appenders, w.inFlight)
}

var workloads = []workload{
	{200, 1, 1}, {200, 16, 1}, {200, 256, 1},
	{4096, 1, 1}, {4096, 16, 1}, {4096, 256, 1}, {4096, 64, 32},
}

func run(dir string, d time.Duration, only string, out io.Writer) error {
	if dir == "" {
		tmp, err := os.MkdirTemp(".", ".bench-buffer-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	abs, _ := filepath.Abs(dir)
	fsType, err := describeFS(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Directory %s (%s), %d CPUs, %s per run, %s\n\n", abs, fsType, runtime.NumCPU(), d, runtime.Version())

	var rows []row
	add := func(r row) {
		rows = append(rows, r)
		fmt.Fprintf(os.Stderr, "done: %s\n", r.name)
	}

	// Baselines on the same disk. The plain fsync loop runs again next to
	// every 4KiB workload, so that each latency check compares against the
	// disk as it was at that moment (a shared disk's latency drifts).
	plainLoop := func(data bool) (sample, error) { return plainFsyncLoop(dir, d, 4096, data) }
	fdatasyncLoop, err := plainLoop(true)
	if err != nil {
		return err
	}
	r := combine([]sample{fdatasyncLoop}, 4096)
	r.name = "plain: 4KiB write + fdatasync loop"
	r.heapMiB = 0
	add(r)

	impls := []string{"iotgw", "tidwall/wal"}
	results := map[string]map[workload]row{"iotgw": {}, "tidwall/wal": {}}
	plainNear := map[workload]row{}
	var seq, bigLoopRow row
	var bigLoop sample
	for _, w := range workloads {
		if only != "" && !strings.Contains(w.String(), only) {
			continue
		}
		// plain, A, B, B, A, plain: a change in the disk's load during the
		// run hits every contender alike.
		var plain []sample
		if w.size == 4096 {
			r, err := plainLoop(false)
			if err != nil {
				return err
			}
			plain = append(plain, r)
		}
		samples := map[string][]sample{}
		for _, impl := range []string{impls[0], impls[1], impls[1], impls[0]} {
			smp, err := runOnce(dir, impl, w, d)
			if err != nil {
				return fmt.Errorf("%s %s: %w", impl, w, err)
			}
			samples[impl] = append(samples[impl], smp)
		}
		if w.size == 4096 {
			r, err := plainLoop(false)
			if err != nil {
				return err
			}
			plain = append(plain, r)
			p := combine(plain, 4096)
			p.heapMiB = 0
			p.name = fmt.Sprintf("plain: 4KiB write + fsync loop, next to %s", w)
			add(p)
			plainNear[w] = p
		}
		if w == (workload{4096, 64, 32}) {
			if bigLoop, err = plainFsyncLoop(dir, d, 1<<20, false); err != nil {
				return err
			}
			r := combine([]sample{bigLoop}, 1<<20)
			r.name, r.heapMiB = "plain: 1MiB write + fsync loop (durable sequential bandwidth)", 0
			add(r)
			bigLoopRow = r
			if seq, err = sequentialWrite(dir, 256<<20, 3); err != nil {
				return err
			}
			add(seq)
		}
		for _, impl := range impls {
			r := combine(samples[impl], w.size)
			r.name = fmt.Sprintf("%s: %dB records, %d appenders × %d in flight", impl, w.size, w.appenders, w.inFlight)
			add(r)
			results[impl][w] = r
		}
	}

	fmt.Fprintln(out, "| case | records/s | MB/s | records/fsync | p50 | p99 | heap MiB |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(out, "| %s | %s | %.1f | %s | %s | %s | %s |\n", r.name, fmtRate(r.recsPerSec), r.mbps,
			fmtOpt(r.recsPerFsync, "%.1f"), fmtDur(r.p50), fmtDur(r.p99), fmtOpt(r.heapMiB, "%.1f"))
	}

	io, tw := results["iotgw"], results["tidwall/wal"]
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| check | measured | target | ok |")
	fmt.Fprintln(out, "|---|---:|---:|---|")
	if r, ok := io[workload{200, 256, 1}]; ok {
		check(out, "200B, 256 appenders: records/s", r.recsPerSec, 100_000, "%.0f", ">=")
	}
	tputW := workload{4096, 64, 32}
	if r, ok := io[tputW]; ok {
		check(out, "4KiB, 64 × 32 in flight: MB/s ÷ plain 1MiB write+fsync loop MB/s", r.mbps/bigLoopRow.mbps, 0.7, "%.2f", ">=")
		check(out, "4KiB, 64 × 32 in flight: MB/s ÷ plain 4KiB write+fsync loop MB/s", r.mbps/plainNear[tputW].mbps, 0.7, "%.2f", ">=")
		fmt.Fprintf(out, "| 4KiB, 64 × 32 in flight: MB/s ÷ 256MiB of 1MiB writes then one fsync (information: mostly page cache speed) | %.2f | – | – |\n", r.mbps/seq.mbps)
	}
	var saturated []string
	for _, w := range workloads {
		r, ok := io[w]
		if !ok || w.size != 4096 {
			continue
		}
		// Little's law: with n appends always outstanding the mean latency
		// is n ÷ throughput, whatever the log does. With hundreds
		// outstanding the disk is saturated and latency is queueing; the
		// latency target is for the loads below that.
		if n := w.appenders * w.inFlight; n > 16 {
			mean := time.Duration(float64(n) / r.recsPerSec * float64(time.Second))
			saturated = append(saturated, fmt.Sprintf("%s (mean latency %.2fms = %d outstanding ÷ %s/s)", w, ms(mean), n, fmtRate(r.recsPerSec)))
			continue
		}
		limit := 2*plainNear[w].p99 + time.Millisecond
		check(out, fmt.Sprintf("%s: p99 append latency, ms (≤ 2 × plain 4KiB fsync p99 %.2fms + 1ms)", w, ms(plainNear[w].p99)),
			ms(r.p99), ms(limit), "%.2f", "<=")
	}
	if len(saturated) > 0 {
		fmt.Fprintf(out, "\nThroughput runs, not latency-checked (the disk is saturated): %s.\n",
			strings.Join(saturated, ", "))
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "| workload (size, appenders × in flight) | iotgw records/s | tidwall/wal records/s | ratio | iotgw p99 | tidwall/wal p99 | iotgw heap MiB | tidwall/wal heap MiB |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, w := range workloads {
		a, ok := io[w]
		if !ok {
			continue
		}
		b := tw[w]
		fmt.Fprintf(out, "| %s | %s | %s | %.2f | %s | %s | %.1f | %.1f |\n", w,
			fmtRate(a.recsPerSec), fmtRate(b.recsPerSec), a.recsPerSec/b.recsPerSec, fmtDur(a.p99), fmtDur(b.p99), a.heapMiB, b.heapMiB)
	}
	return nil
}

// runOnce opens a fresh log of the implementation, runs the workload on it
// and removes it.
func runOnce(dir, impl string, w workload, d time.Duration) (sample, error) {
	sub := filepath.Join(dir, fmt.Sprintf("%s-%d-%d-%d", filepath.Base(impl), w.size, w.appenders, w.inFlight))
	defer os.RemoveAll(sub)
	var l logUnderTest
	var err error
	if impl == "iotgw" {
		l, err = openIotgw(sub)
	} else {
		l, err = openTidwall(sub)
	}
	if err != nil {
		return sample{}, err
	}
	smp, err := appendLoad(l, d, w.size, w.appenders, w.inFlight)
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	return smp, err
}

type row struct {
	name         string
	recsPerSec   float64
	mbps         float64
	recsPerFsync float64 // 0: not applicable
	p50, p99     time.Duration
	heapMiB      float64 // 0: not measured
}

func check(out io.Writer, name string, got, target float64, format, op string) {
	ok := got >= target
	if op == "<=" {
		ok = got <= target
	}
	mark := "yes"
	if !ok {
		mark = "**no**"
	}
	fmt.Fprintf(out, "| %s | "+format+" | %s "+format+" | %s |\n", name, got, op, target, mark)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2fms", ms(d))
}

func fmtRate(v float64) string {
	if v >= 10_000 {
		return fmt.Sprintf("%.0fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtOpt(v float64, format string) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

// plainFsyncLoop appends size-byte blocks to one file, each followed by
// fsync (or fdatasync): what a naive durable log does per record.
func plainFsyncLoop(dir string, d time.Duration, size int, data bool) (sample, error) {
	var s sample
	f, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		return s, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, size)
	start := time.Now()
	for time.Since(start) < d {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return s, err
		}
		if data {
			err = fdatasync(f)
		} else {
			err = f.Sync()
		}
		if err != nil {
			return s, err
		}
		s.latencies = append(s.latencies, time.Since(t))
	}
	s.elapsed = time.Since(start)
	s.records = uint64(len(s.latencies))
	s.synced, s.fsyncs = s.records, s.records
	return s, nil
}

// sequentialWrite writes total bytes in 1MiB writes and fsyncs once, runs
// times, and keeps the best: the disk's sequential bandwidth, the ceiling
// for any log.
func sequentialWrite(dir string, total, runs int) (row, error) {
	r := row{name: "plain: 256MiB in 1MiB writes, then one fsync (best of 3)"}
	buf := make([]byte, 1<<20)
	for range runs {
		f, err := os.Create(filepath.Join(dir, "seq"))
		if err != nil {
			return r, err
		}
		start := time.Now()
		for n := 0; n < total && err == nil; n += len(buf) {
			_, err = f.Write(buf)
		}
		if err == nil {
			err = f.Sync()
		}
		el := time.Since(start)
		f.Close()
		os.Remove(f.Name())
		if err != nil {
			return r, err
		}
		r.mbps = max(r.mbps, float64(total)/1e6/el.Seconds())
	}
	return r, nil
}

// logUnderTest is what the load generator drives.
type logUnderTest interface {
	Append(data []byte, done func(error)) error
	// consume reads and commits what was appended until ctx is done, like
	// the egress pipeline keeping up.
	consume(ctx context.Context) error
	fsyncs() (fsyncs, records uint64)
	Close() error
}

// sample is one run of a workload.
type sample struct {
	records, synced, fsyncs uint64
	elapsed                 time.Duration
	latencies               []time.Duration
	heapBytes               uint64
}

// combine merges the runs of one workload into a row.
func combine(samples []sample, size int) row {
	var r row
	var total sample
	for _, s := range samples {
		total.records += s.records
		total.synced += s.synced
		total.fsyncs += s.fsyncs
		total.elapsed += s.elapsed
		total.latencies = append(total.latencies, s.latencies...)
		total.heapBytes = max(total.heapBytes, s.heapBytes)
	}
	r.recsPerSec = float64(total.records) / total.elapsed.Seconds()
	r.mbps = r.recsPerSec * float64(size) / 1e6
	if total.fsyncs > 0 {
		r.recsPerFsync = float64(total.synced) / float64(total.fsyncs)
	}
	r.p50, r.p99 = percentiles(total.latencies)
	r.heapMiB = float64(total.heapBytes) / (1 << 20)
	return r
}

// appendLoad runs appenders goroutines for d, each keeping inFlight appends
// of size bytes outstanding, with a consumer reading and committing.
func appendLoad(l logUnderTest, d time.Duration, size, appenders, inFlight int) (sample, error) {
	var s sample
	ctx, cancel := context.WithCancel(context.Background())
	consumeErr := make(chan error, 1)
	go func() { consumeErr <- l.consume(ctx) }()

	var stop atomic.Bool
	var failed atomic.Value
	lats := make([][]time.Duration, appenders)
	var wg sync.WaitGroup
	data := make([]byte, size)
	f0, r0 := l.fsyncs()
	start := time.Now()
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem := make(chan struct{}, inFlight)
			var mu sync.Mutex
			for !stop.Load() {
				sem <- struct{}{}
				t := time.Now()
				err := l.Append(data, func(err error) {
					if err != nil {
						failed.Store(err)
					}
					mu.Lock()
					lats[a] = append(lats[a], time.Since(t))
					mu.Unlock()
					<-sem
				})
				if errors.Is(err, buffer.ErrFull) {
					<-sem
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
			for range inFlight {
				sem <- struct{}{}
			}
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	s.elapsed = time.Since(start)
	f1, r1 := l.fsyncs()
	// The log's memory: the heap in use minus the latency samples this
	// generator keeps.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var own uint64
	for _, l := range lats {
		own += uint64(cap(l)) * 8
	}
	s.heapBytes = ms.HeapInuse - min(own, ms.HeapInuse)
	cancel()
	if err := <-consumeErr; err != nil {
		return s, err
	}
	if err, _ := failed.Load().(error); err != nil {
		return s, err
	}
	s.latencies = slices.Concat(lats...)
	s.records = uint64(len(s.latencies))
	s.fsyncs, s.synced = f1-f0, r1-r0
	return s, nil
}

func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// iotgwLog is package buffer with its defaults (sync "always").
type iotgwLog struct{ *buffer.Log }

func openIotgw(dir string) (*iotgwLog, error) {
	l, err := buffer.Open(buffer.Options{Dir: dir, MaxBytes: 8 << 30}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return &iotgwLog{l}, nil
}

func (l *iotgwLog) fsyncs() (uint64, uint64) {
	st := l.Stats()
	return st.Fsyncs, st.SyncedRecords
}

func (l *iotgwLog) consume(ctx context.Context) error {
	for {
		es, err := l.Read(ctx, 1000, 4<<20)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := l.Commit(es[len(es)-1].Offset); err != nil {
			return err
		}
	}
}

// tidwallLog drives github.com/tidwall/wal the way one would build a
// group-committed ingest log on it: appenders queue, one writer goroutine
// writes everything queued with one WriteBatch (one fsync) and then calls
// the callbacks; a consumer reads by index and calls TruncateFront every
// 200ms (what buffer.cursor_interval does by default).
type tidwallLog struct {
	log *wal.Log

	mu      sync.Mutex
	queue   [][]byte
	dones   []func(error)
	wake    chan struct{}
	closed  bool
	written atomic.Uint64 // last index written and synced
	batches atomic.Uint64
	records atomic.Uint64
	wg      sync.WaitGroup
}

func openTidwall(dir string) (*tidwallLog, error) {
	l, err := wal.Open(dir, &wal.Options{SegmentSize: 64 << 20, NoCopy: false})
	if err != nil {
		return nil, err
	}
	t := &tidwallLog{log: l, wake: make(chan struct{}, 1)}
	last, err := l.LastIndex()
	if err != nil {
		return nil, err
	}
	t.written.Store(last)
	t.wg.Add(1)
	go t.writer()
	return t, nil
}

func (t *tidwallLog) Append(data []byte, done func(error)) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return buffer.ErrClosed
	}
	t.queue = append(t.queue, bytes.Clone(data)) // the caller may reuse data (gateway.Buffer)
	t.dones = append(t.dones, done)
	first := len(t.queue) == 1
	t.mu.Unlock()
	if first {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

func (t *tidwallLog) writer() {
	defer t.wg.Done()
	var batch wal.Batch
	for {
		<-t.wake
		for {
			t.mu.Lock()
			q, dones, closed := t.queue, t.dones, t.closed
			t.queue, t.dones = nil, nil
			t.mu.Unlock()
			if len(q) == 0 {
				if closed {
					return
				}
				break
			}
			next := t.written.Load() + 1
			for i, d := range q {
				batch.Write(next+uint64(i), d)
			}
			err := t.log.WriteBatch(&batch)
			batch.Clear()
			if err == nil {
				t.written.Add(uint64(len(q)))
				t.batches.Add(1)
				t.records.Add(uint64(len(q)))
			}
			for _, done := range dones {
				done(err)
			}
		}
	}
}

func (t *tidwallLog) fsyncs() (uint64, uint64) { return t.batches.Load(), t.records.Load() }

func (t *tidwallLog) consume(ctx context.Context) error {
	next, err := t.log.FirstIndex()
	if err != nil {
		return err
	}
	next = max(next, 1)
	lastTruncate := time.Now()
	for ctx.Err() == nil {
		last := t.written.Load()
		if next > last {
			time.Sleep(100 * time.Microsecond) // wal has no blocking read
			continue
		}
		for ; next <= last; next++ {
			if _, err := t.log.Read(next); err != nil {
				return fmt.Errorf("read %d: %w", next, err)
			}
		}
		if time.Since(lastTruncate) > 200*time.Millisecond {
			if err := t.log.TruncateFront(next - 1); err != nil && !errors.Is(err, wal.ErrOutOfRange) {
				return fmt.Errorf("truncate front %d: %w", next-1, err)
			}
			lastTruncate = time.Now()
		}
	}
	return nil
}

func (t *tidwallLog) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
	t.wg.Wait()
	return t.log.Close()
}
