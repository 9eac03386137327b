package buffer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// appendLoop has each of appenders goroutines append records of size bytes
// one at a time (each waits for its done, like a device connection with one
// message in flight) until total records were appended.
func appendLoop(tb testing.TB, l *Log, appenders, total, size int) {
	var left atomic.Int64
	left.Store(int64(total))
	data := make([]byte, size)
	var wg sync.WaitGroup
	for range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			for left.Add(-1) >= 0 {
				if err := l.Append(data, func(err error) { done <- err }); err != nil {
					tb.Error(err)
					return
				}
				if err := <-done; err != nil {
					tb.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func benchOptions(dir string) Options {
	return Options{Dir: dir, MaxBytes: 8 << 30, SegmentBytes: 64 << 20}
}

func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{200, 4096} {
		for _, appenders := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("size=%d/appenders=%d", size, appenders), func(b *testing.B) {
				l, err := Open(benchOptions(b.TempDir()), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				b.SetBytes(int64(size))
				b.ResetTimer()
				appendLoop(b, l, appenders, b.N, size)
				b.StopTimer()
				st := l.Stats()
				b.ReportMetric(st.RecordsPerFsync, "records/fsync")
			})
		}
	}
}

// BenchmarkReadTail measures the common case: egress keeps up and reads
// what was just written (served by the page cache through pread).
func BenchmarkReadTail(b *testing.B) {
	opts := benchOptions(b.TempDir())
	opts.Sync = SyncInterval
	l, err := Open(opts, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	data := make([]byte, 200)
	const batch = 100
	b.SetBytes(200)
	b.ReportAllocs()
	ctx := context.Background()
	for i := 0; i < b.N; i += batch {
		var wg sync.WaitGroup
		wg.Add(batch)
		for range batch {
			if err := l.Append(data, func(error) { wg.Done() }); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
		for got := 0; got < batch; {
			es, err := l.Read(ctx, batch, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			got += len(es)
			if err := l.Commit(es[len(es)-1].Offset); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	f := appendFrame(nil, 1, 1, make([]byte, 200))
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		if _, _, err := decodeFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}
