package buffer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestScratchSixteen(t *testing.T) {
	for i := range 8 {
		scratchInPlace = i%2 == 1
		scratchFile = nil
		o := benchOptions(t.TempDir())
		l, _ := Open(o, nil)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for {
				es, err := l.Read(ctx, 1000, 1<<30)
				if err != nil {
					return
				}
				l.Commit(es[len(es)-1].Offset)
			}
		}()
		start := time.Now()
		var mu sync.Mutex
		var lats []time.Duration
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := make([]byte, 4096)
				done := make(chan error, 1)
				for time.Since(start) < 3*time.Second {
					t0 := time.Now()
					l.Append(data, func(err error) { done <- err })
					<-done
					mu.Lock()
					lats = append(lats, time.Since(t0))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		cancel()
		l.Close()
		slices.Sort(lats)
		t.Log("inplace", scratchInPlace, len(lats)/3, "per s", "p50", lats[len(lats)/2], "p99", lats[len(lats)*99/100])
	}
}
