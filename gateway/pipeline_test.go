package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// memBuffer is an in-memory Buffer for unit tests of the pipeline.
type memBuffer struct {
	mu        sync.Mutex
	entries   []Entry
	read      int
	committed Offset
	wake      chan struct{}
}

func newMemBuffer() *memBuffer { return &memBuffer{wake: make(chan struct{}, 1)} }

func (b *memBuffer) Append(data []byte, done func(error)) error {
	b.mu.Lock()
	b.entries = append(b.entries, Entry{Offset: Offset(len(b.entries) + 1), Data: data})
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	done(nil)
	return nil
}

func (b *memBuffer) Read(ctx context.Context, max, maxBytes int) ([]Entry, error) {
	for {
		b.mu.Lock()
		if b.read < len(b.entries) {
			end := min(len(b.entries), b.read+max)
			out := append([]Entry(nil), b.entries[b.read:end]...)
			b.read = end
			b.mu.Unlock()
			return out, nil
		}
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.wake:
		}
	}
}

func (b *memBuffer) Commit(off Offset) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off > b.committed {
		b.committed = off
	}
	return nil
}

func (b *memBuffer) Close() error { return nil }

func (b *memBuffer) Committed() Offset {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.committed
}

// flakySink fails writes by script and records what it accepted, in order.
type flakySink struct {
	mu       sync.Mutex
	got      []Message
	calls    int
	failures func(call int, msgs []Message) error
}

func (s *flakySink) EnsureTopic(context.Context, TopicSpec) error { return nil }
func (s *flakySink) Close() error                                 { return nil }

func (s *flakySink) Write(ctx context.Context, msgs []Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	var err error
	if s.failures != nil {
		err = s.failures(s.calls, msgs)
	}
	var we *WriteError
	failed := map[int]bool{}
	if errors.As(err, &we) {
		for _, i := range we.Retry {
			failed[i] = true
		}
		for _, i := range we.Permanent {
			failed[i] = true
		}
	} else if err != nil {
		return err
	}
	for i, m := range msgs {
		if !failed[i] {
			s.got = append(s.got, m)
		}
	}
	return err
}

func appendRecords(t *testing.T, b Buffer, n int, topic func(i int) string) {
	t.Helper()
	for i := 0; i < n; i++ {
		dev := fmt.Sprintf("d%d", i%3)
		rec := &Record{ID: fmt.Sprint(i), Device: dev, Protocol: ProtocolMQTT, Topic: topic(i), ReceivedAt: time.Unix(0, 0), Payload: []byte(fmt.Sprint(i))}
		if err := b.Append(EncodeRecord(nil, rec), func(error) {}); err != nil {
			t.Fatal(err)
		}
	}
}

func runPipeline(t *testing.T, b *memBuffer, sink Sink, until func() bool) {
	t.Helper()
	router, _ := NewRouter(nil)
	p := NewPipeline(EgressOptions{BatchRecords: 7, RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond}, b, nil, router, sink, 1<<20, "gw", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !until() {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("pipeline did not finish in time")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestPipelineRetriesKeepPerDeviceOrder(t *testing.T) {
	b := newMemBuffer()
	appendRecords(t, b, 50, func(i int) string { return fmt.Sprintf("devices/d%d/position", i%3) })
	// Every other call fails for device d1's messages (as if its partition's
	// leader were down), and the third call fails outright.
	sink := &flakySink{failures: func(call int, msgs []Message) error {
		if call == 3 {
			return errors.New("broker unreachable")
		}
		if call%2 == 0 {
			return nil
		}
		we := &WriteError{Err: errors.New("not leader")}
		for i, m := range msgs {
			if string(m.Key) == "d1" {
				we.Retry = append(we.Retry, i)
			}
		}
		if len(we.Retry) == 0 {
			return nil
		}
		return we
	}}
	runPipeline(t, b, sink, func() bool { return b.Committed() == 50 })
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range sink.got {
		var id string
		for _, h := range m.Headers {
			if h.Key == HeaderID {
				id = string(h.Value)
			}
		}
		var n int
		fmt.Sscan(id, &n)
		if seen[id] {
			t.Errorf("duplicate %s", id)
		}
		seen[id] = true
		if prev, ok := last[string(m.Key)]; ok && n < prev {
			t.Errorf("device %s: %d after %d", m.Key, n, prev)
		}
		last[string(m.Key)] = n
	}
	if len(seen) != 50 {
		t.Errorf("delivered %d distinct records, want 50", len(seen))
	}
}

func TestPipelineDeadLetters(t *testing.T) {
	b := newMemBuffer()
	appendRecords(t, b, 6, func(i int) string {
		if i == 2 {
			return "not/a/device/topic"
		}
		return "devices/d/position"
	})
	if err := b.Append([]byte{0xde, 0xad}, func(error) {}); err != nil { // corrupt record
		t.Fatal(err)
	}
	sink := &flakySink{failures: func(call int, msgs []Message) error {
		for i, m := range msgs {
			if string(m.Headers[0].Value) == "4" && m.Topic != "iot.dlq" {
				return &WriteError{Permanent: []int{i}, Causes: []error{errors.New("message too large")}, Err: errors.New("too large")}
			}
		}
		return nil
	}}
	runPipeline(t, b, sink, func() bool { return b.Committed() == 7 })
	dlq := map[string]string{}
	for _, m := range sink.got {
		if m.Topic == "iot.dlq" {
			key := string(m.Value)
			if key != "\xde\xad" {
				key = string(m.Headers[0].Value) // iotgw-id
			}
			for _, h := range m.Headers {
				if h.Key == HeaderError {
					dlq[key] = string(h.Value)
				}
			}
		}
	}
	if len(dlq) != 3 || dlq["2"] == "" || dlq["4"] == "" || dlq["\xde\xad"] == "" {
		t.Errorf("dead letters = %v, want records 2 (unroutable), 4 (rejected) and the corrupt one", dlq)
	}
}
