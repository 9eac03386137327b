package buffer

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// copyingSink keeps deep copies of what it accepts and says whether it is
// settled, as gateway.KafkaSink does, so the pipeline reuses the memory of
// written batches: the Read slabs among it.
type copyingSink struct {
	mu      sync.Mutex
	got     []gateway.Message
	settled atomic.Bool
}

func (s *copyingSink) EnsureTopic(context.Context, gateway.TopicSpec) error { return nil }
func (s *copyingSink) Close() error                                         { return nil }
func (s *copyingSink) Settled() bool                                        { return s.settled.Load() }

func (s *copyingSink) Write(_ context.Context, msgs []gateway.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		c := gateway.Message{Topic: m.Topic, Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value), Offset: m.Offset}
		s.got = append(s.got, c)
	}
	return nil
}

// The pipeline over a real Log reuses Read slabs once the batches built
// from them are written, and raw messages (which are views into the
// slabs) still reach the sink exactly as appended; a sink that is not
// settled gets nothing reused.
func TestPipelineReusesReadSlabs(t *testing.T) {
	for _, settled := range []bool{true, false} {
		t.Run(fmt.Sprint("settled=", settled), func(t *testing.T) {
			opts := testOptions(t.TempDir())
			opts.SegmentBytes, opts.MaxBytes = 8<<20, 64<<20 // slabs are full size only within a large segment
			l := openTest(t, opts)
			router, err := gateway.NewRouter([]gateway.Route{{Match: "devices/{device}/{stream}", Topic: "t", Format: gateway.FormatRaw}})
			if err != nil {
				t.Fatal(err)
			}
			const n = 3000
			want := make([][]byte, n)
			for i := range n {
				want[i] = bytes.Repeat([]byte{byte('a' + i%26)}, 200+i%1500)
				copy(want[i], fmt.Sprintf("%d:", i))
				rec := &gateway.Record{ID: fmt.Sprint(i), Device: "d", Topic: "devices/d/s", Protocol: gateway.ProtocolMQTT, ReceivedAt: time.Unix(0, 0).UTC(), Payload: want[i]}
				if err := appendWait(t, l, gateway.EncodeRecord(nil, rec)); err != nil {
					t.Fatal(err)
				}
			}
			sink := &copyingSink{}
			sink.settled.Store(settled)
			p := gateway.NewPipeline(gateway.EgressOptions{BatchRecords: 200}, l, nil, router, sink, 256<<10, "gw", nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			deadline := time.Now().Add(20 * time.Second)
			for {
				sink.mu.Lock()
				got := len(sink.got)
				sink.mu.Unlock()
				if got >= n || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if len(sink.got) != n {
				t.Fatalf("delivered %d, want %d", len(sink.got), n)
			}
			for i, m := range sink.got {
				if !bytes.Equal(m.Value, want[i]) {
					t.Fatalf("record %d arrived as %.40q…, appended as %.40q…", i, m.Value, want[i])
				}
			}
			if v := l.slabPool.Get(); !settled && v != nil {
				t.Error("a slab was recycled while the sink was not settled")
			}
			if settled && l.stats.slabReuses.Load() == 0 {
				t.Error("no Read reused a slab")
			}
		})
	}
}

// A Read after RecycleEntries returns its records in the slice given back,
// and a smaller slice does not replace a larger one.
func TestReadReturnsRecycledEntries(t *testing.T) {
	l := openTest(t, testOptions(t.TempDir()))
	for i := range 10 {
		if err := appendWait(t, l, []byte(fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	read := func(from int) []gateway.Entry {
		t.Helper()
		got, err := l.Read(ctx, 4, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range got {
			if want := fmt.Sprintf("r%d", from+i); string(e.Data) != want {
				t.Fatalf("entry %d is %q, want %q", i, e.Data, want)
			}
		}
		return got
	}
	first := read(0)
	l.RecycleEntries(first)
	l.RecycleEntries(make([]gateway.Entry, 0, 1))
	second := read(len(first))
	if len(second) == 0 || &second[0] != &first[:1][0] {
		t.Fatal("Read did not return its records in the recycled slice")
	}
}
