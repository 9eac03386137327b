package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
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
	waiting   bool // a Read is blocked for lack of entries
}

func newMemBuffer() *memBuffer { return &memBuffer{wake: make(chan struct{}, 1)} }

func (b *memBuffer) Append(data []byte, done func(error)) error {
	b.mu.Lock()
	b.entries = append(b.entries, Entry{Offset: Offset(len(b.entries) + 1), Data: bytes.Clone(data)})
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
		b.waiting = true
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.wake:
		}
		b.mu.Lock()
		b.waiting = false
		b.mu.Unlock()
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

// topicSink is a flakySink whose EnsureTopic rejects some topics.
type topicSink struct {
	flakySink
	reject map[string]bool
}

func (s *topicSink) EnsureTopic(_ context.Context, spec TopicSpec) error {
	if s.reject[spec.Name] {
		return fmt.Errorf("%w: topic %s does not exist and kafka.create_topics is false", ErrTopicRejected, spec.Name)
	}
	return nil
}

func headerValue(m Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Records for a topic that cannot exist and payloads that fail their
// stream's schema go to the DLQ with the reason; nothing blocks the log.
func TestPipelineSchemaAndRejectedTopics(t *testing.T) {
	b := newMemBuffer()
	payloads := []string{
		`{"device":"d","seq":1,"lat":1,"lon":2}`,   // valid
		`{"device":"d","seq":2,"lat":100,"lon":2}`, // out of range
		`not json`,        // not JSON
		`{"any":"thing"}`, // engine: no schema, but its topic is rejected
	}
	for i, p := range payloads {
		stream := "position"
		if i == 3 {
			stream = "engine"
		}
		rec := &Record{ID: fmt.Sprint(i), Device: "d", Stream: stream, Protocol: ProtocolMQTT, Topic: "devices/d/" + stream, ReceivedAt: time.Unix(0, 0), Payload: []byte(p)}
		if err := b.Append(EncodeRecord(nil, rec), func(error) {}); err != nil {
			t.Fatal(err)
		}
	}
	sink := &topicSink{reject: map[string]bool{"iot.engine": true}}
	router, _ := NewRouter(nil)
	p := NewPipeline(EgressOptions{BatchRecords: 10, RetryMin: time.Millisecond, RetryMax: time.Millisecond,
		Schemas: map[string]string{"position": "testdata/position.schema.json"}}, b, nil, router, sink, 1<<20, "gw", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for b.Committed() != 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b.Committed() != 4 {
		t.Fatalf("committed %d, want 4", b.Committed())
	}
	got := map[string]Message{}
	for _, m := range sink.got {
		got[headerValue(m, HeaderID)] = m
	}
	if m := got["0"]; m.Topic != "iot.position" {
		t.Errorf("valid record went to %s", m.Topic)
	}
	for id, want := range map[string]string{"1": "at '/lat'", "2": "not JSON", "3": "kafka.create_topics is false"} {
		m := got[id]
		if m.Topic != "iot.dlq" || !strings.Contains(headerValue(m, HeaderError), want) {
			t.Errorf("record %s: topic %s error %q, want iot.dlq with %q", id, m.Topic, headerValue(m, HeaderError), want)
		}
		if headerValue(m, HeaderDLQTopic) == "" || headerValue(m, HeaderDevice) != "d" {
			t.Errorf("record %s: dead letter lacks the intended topic or metadata: %v", id, m.Headers)
		}
	}
	if st := p.Stats(); st.Invalid != 2 || st.DeadLetters != 3 || st.Delivered != 4 {
		t.Errorf("stats = %+v", st)
	}

	// A schema file that disappears after Validate stops egress with its key.
	bad := NewPipeline(EgressOptions{Schemas: map[string]string{"position": "testdata/missing.json"}}, b, nil, router, sink, 1<<20, "gw", nil)
	if err := bad.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "egress.schemas.position") {
		t.Errorf("Run with a missing schema: %v", err)
	}
}

// The sink may list retries out of order (a chunk's failures, then the
// chunks it did not send); the pipeline resends them in buffer order.
func TestPipelineResendsRetriesInOrder(t *testing.T) {
	b := newMemBuffer()
	appendRecords(t, b, 7, func(i int) string { return "devices/d0/position" })
	sink := &flakySink{failures: func(call int, msgs []Message) error {
		if call == 1 {
			return &WriteError{Retry: []int{5, 6, 1, 2, 3, 4}, Err: errors.New("not leader")}
		}
		return nil
	}}
	runPipeline(t, b, sink, func() bool { return b.Committed() == 7 })
	var ids []string
	for _, m := range sink.got {
		ids = append(ids, headerValue(m, HeaderID))
	}
	if strings.Join(ids, ",") != "0,1,2,3,4,5,6" {
		t.Errorf("delivered in order %v", ids)
	}
}

// With the dead-letter topic unavailable, nothing is dropped: what comes
// before the dead letter is delivered, egress waits at it, and once the DLQ
// exists the dead letter and what follows go out.
func TestPipelineDLQUnavailable(t *testing.T) {
	b := newMemBuffer()
	appendRecords(t, b, 4, func(i int) string {
		if i == 2 {
			return "unroutable"
		}
		return "devices/d0/position"
	})
	sink := &dlqSink{}
	sink.down.Store(true)
	router, _ := NewRouter(nil)
	p := NewPipeline(EgressOptions{BatchRecords: 7, RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond}, b, nil, router, sink, 1<<20, "gw", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: committed %d, delivered %d", what, b.Committed(), sink.delivered())
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("the records before the dead letter", func() bool { return b.Committed() == 2 && sink.delivered() == 2 })
	time.Sleep(50 * time.Millisecond) // many retries at 1-2 ms
	if b.Committed() != 2 || sink.delivered() != 2 {
		t.Fatalf("with the DLQ down egress moved past the dead letter: committed %d, delivered %d", b.Committed(), sink.delivered())
	}
	sink.down.Store(false)
	waitFor("everything once the DLQ exists", func() bool { return b.Committed() == 4 && sink.delivered() == 4 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.got[2].Topic != "iot.dlq" || sink.got[3].Topic == "iot.dlq" {
		t.Errorf("delivered topics %s, %s; want the dead letter third", sink.got[2].Topic, sink.got[3].Topic)
	}
}

// dlqSink refuses the dead-letter topic while down is set.
type dlqSink struct {
	down atomic.Bool
	mu   sync.Mutex
	got  []Message
}

func (s *dlqSink) EnsureTopic(_ context.Context, spec TopicSpec) error {
	if spec.Name == "iot.dlq" && s.down.Load() {
		return fmt.Errorf("%w: topic %s does not exist and kafka.create_topics is false", ErrTopicRejected, spec.Name)
	}
	return nil
}

func (s *dlqSink) Write(_ context.Context, msgs []Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, msgs...)
	return nil
}

func (s *dlqSink) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *dlqSink) Close() error { return nil }

// A dead letter the DLQ refuses for good is kept and retried with backoff,
// not dropped; the buffer is committed only once it is written.
func TestPipelineDLQRefusalRetried(t *testing.T) {
	b := newMemBuffer()
	appendRecords(t, b, 3, func(i int) string { return "devices/d0/position" })
	refusals := 0
	sink := &flakySink{failures: func(call int, msgs []Message) error {
		we := &WriteError{Err: errors.New("refused")}
		for i, m := range msgs {
			switch {
			case call == 1 && headerValue(m, HeaderID) == "1":
				we.Permanent = append(we.Permanent, i)
				we.Causes = append(we.Causes, errors.New("record too large"))
			case m.Topic == "iot.dlq" && refusals < 3:
				refusals++
				we.Permanent = append(we.Permanent, i)
				we.Causes = append(we.Causes, errors.New("topic authorization failed"))
			}
		}
		if len(we.Permanent) == 0 {
			return nil
		}
		return we
	}}
	runPipeline(t, b, sink, func() bool { return b.Committed() == 3 })
	var topics []string
	for _, m := range sink.got {
		topics = append(topics, m.Topic+"/"+headerValue(m, HeaderID))
	}
	if refusals != 3 || strings.Join(topics, ",") != "iot.position/0,iot.position/2,iot.dlq/1" {
		t.Errorf("after %d DLQ refusals delivered %v; want the dead letter written once, last", refusals, topics)
	}
}

// settlingSink is a flakySink that keeps deep copies of what it accepts,
// so the pipeline may reuse the memory of written batches, and says
// whether it is settled (see settler).
type settlingSink struct {
	flakySink
	settled atomic.Bool
}

func (s *settlingSink) Settled() bool { return s.settled.Load() }

func (s *settlingSink) Write(ctx context.Context, msgs []Message) error {
	cp := make([]Message, len(msgs))
	for i, m := range msgs {
		cp[i] = Message{Topic: m.Topic, Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value), Offset: m.Offset}
		for _, h := range m.Headers {
			cp[i].Headers = append(cp[i].Headers, Header{h.Key, bytes.Clone(h.Value)})
		}
	}
	return s.flakySink.Write(ctx, cp)
}

// With a sink that settles, the memory of written batches is reused and
// every record still reaches it as built (the id header, the envelope's id
// and payload agree); with one that does not, no arena block is recycled.
func TestPipelineReusesMemoryOnlyWhenSettled(t *testing.T) {
	for _, settled := range []bool{true, false} {
		t.Run(fmt.Sprint("settled=", settled), func(t *testing.T) {
			b := newMemBuffer()
			const n = 3000
			appendRecords(t, b, n, func(i int) string { return fmt.Sprintf("devices/d%d/position", i%3) })
			sink := &settlingSink{}
			sink.settled.Store(settled)
			router, _ := NewRouter(nil)
			p := NewPipeline(EgressOptions{BatchRecords: 50}, b, nil, router, sink, 1<<20, "gw", nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			deadline := time.Now().Add(10 * time.Second)
			for b.Committed() != n && time.Now().Before(deadline) {
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
				var env struct {
					ID      string          `json:"id"`
					Payload json.RawMessage `json:"payload"`
				}
				if err := json.Unmarshal(m.Value, &env); err != nil {
					t.Fatalf("message %d: %v: %q", i, err, m.Value)
				}
				var id string
				for _, h := range m.Headers {
					if h.Key == HeaderID {
						id = string(h.Value)
					}
				}
				if id != fmt.Sprint(i) || env.ID != id || string(env.Payload) != id {
					t.Fatalf("message %d: header id %q, envelope id %q, payload %s", i, id, env.ID, env.Payload)
				}
			}
			if !settled && p.arena.bytes.pool.Get() != nil {
				t.Error("an arena block was recycled while the sink was not settled")
			}
		})
	}
}

// gateSink holds its first Write until release is closed and records
// every Write's messages.
type gateSink struct {
	mu      sync.Mutex
	writes  [][]Message
	started chan struct{} // closed when the first Write starts
	release chan struct{}
}

func newGateSink() *gateSink {
	return &gateSink{started: make(chan struct{}), release: make(chan struct{})}
}

func (s *gateSink) EnsureTopic(context.Context, TopicSpec) error { return nil }
func (s *gateSink) Close() error                                 { return nil }

func (s *gateSink) Write(ctx context.Context, msgs []Message) error {
	s.mu.Lock()
	first := len(s.writes) == 0
	s.writes = append(s.writes, append([]Message(nil), msgs...))
	s.mu.Unlock()
	if first {
		close(s.started)
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *gateSink) counts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n []int
	for _, w := range s.writes {
		n = append(n, len(w))
	}
	return n
}

func (b *memBuffer) readCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read
}

// readAllAndWaiting says whether n entries were read and a Read is blocked
// for more: the pipeline's reader finished with everything before it.
func (b *memBuffer) readAllAndWaiting(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read == n && b.waiting
}

func startPipeline(t *testing.T, b *memBuffer, sink Sink, batchRecords, maxBatchBytes int) {
	t.Helper()
	startPipelineWith(t, b, sink, EgressOptions{BatchRecords: batchRecords}, maxBatchBytes)
}

// startPipelineWith runs a pipeline with opts (and short retries) until
// the test ends.
func startPipelineWith(t *testing.T, b *memBuffer, sink Sink, opts EgressOptions, maxBatchBytes int) {
	t.Helper()
	router, _ := NewRouter(nil)
	opts.RetryMin, opts.RetryMax = time.Millisecond, 2*time.Millisecond
	p := NewPipeline(opts, b, nil, router, sink, maxBatchBytes, "gw", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Records that arrive while a Write is in flight are read and built at
// once, in several small reads, and all go out together in the next Write:
// none waits for a Write of its own.
func TestPipelineSendsWhatArrivedDuringAWriteInTheNextWrite(t *testing.T) {
	b := newMemBuffer()
	sink := newGateSink()
	startPipeline(t, b, sink, 50, 1<<20)
	topic := func(int) string { return "devices/d/position" }
	appendRecords(t, b, 1, topic)
	<-sink.started
	for i := range 20 {
		// One at a time, so that reads return a few records each.
		appendRecords(t, b, 1, topic)
		if i%5 == 4 {
			waitFor(t, "the reader", func() bool { return b.readCount() == i+2 })
		}
	}
	// The reader asks for more only after it queued what it read.
	waitFor(t, "the reader to build all 21 records", func() bool { return b.readAllAndWaiting(21) })
	close(sink.release)
	waitFor(t, "commit", func() bool { return b.Committed() == 21 })
	if got := sink.counts(); len(got) != 2 || got[1] != 20 {
		t.Fatalf("messages per Write %v, want [1 20]", got)
	}
	for i, m := range append(sink.writes[0], sink.writes[1]...) {
		if want := Offset(i + 1); m.Offset != want {
			t.Fatalf("message %d has offset %d, want %d (buffer order)", i, m.Offset, want)
		}
	}
}

// While Kafka does not answer, the reader stops after prepareAhead Writes'
// worth of messages: memory stays bounded and the rest waits in the buffer.
func TestPipelineReadsAheadBoundedly(t *testing.T) {
	b := newMemBuffer()
	sink := newGateSink()
	const maxBatchBytes = 2000
	startPipeline(t, b, sink, 7, maxBatchBytes)
	topic := func(int) string { return "devices/d/position" }
	appendRecords(t, b, 1, topic)
	<-sink.started
	appendRecords(t, b, 2000, topic)
	time.Sleep(100 * time.Millisecond)
	read := b.readCount()
	var probe Message
	rec := &Record{ID: "1999", Device: "d1", Protocol: ProtocolMQTT, Topic: "devices/d/position", ReceivedAt: time.Unix(0, 0), Payload: []byte("1999")}
	router, _ := NewRouter(nil)
	rt, _ := router.Route(rec)
	probe = buildMessage(nil, rec, rt, "gw", 1)
	// The Write in flight, what the queue may hold (the message that
	// crosses its limit included), and one more Read.
	most := 1 + (prepareAhead*writeRequests*maxBatchBytes)/MessageSize(&probe) + 1 + 7
	if read > most || read < 10 {
		t.Fatalf("read %d of 2001 records while the Write hung, want at most %d", read, most)
	}
	close(sink.release)
	waitFor(t, "commit", func() bool { return b.Committed() == 2001 })
	var off Offset
	for _, w := range sink.writes {
		if len(w) > 7 {
			t.Fatalf("a Write of %d messages, more than egress.batch_records (7)", len(w))
		}
		for _, m := range w {
			if m.Offset != off+1 {
				t.Fatalf("offset %d after %d", m.Offset, off)
			}
			off = m.Offset
		}
	}
}

// lingerPipeline runs a pipeline with egress.linger set to linger and
// batch_records to batchRecords, until the test ends.
func lingerPipeline(t *testing.T, b *memBuffer, sink Sink, batchRecords int, linger time.Duration) {
	t.Helper()
	startPipelineWith(t, b, sink, EgressOptions{BatchRecords: batchRecords, Linger: &linger}, 1<<20)
}

// Records that trickle in within egress.linger of the first go out in one
// Write, not one Write (one produce request) each.
func TestPipelineLingersForMoreRecords(t *testing.T) {
	b := newMemBuffer()
	sink := &flakySink{}
	lingerPipeline(t, b, sink, 50, 300*time.Millisecond)
	topic := func(int) string { return "devices/d/position" }
	start := time.Now()
	for i := range 3 {
		appendRecords(t, b, 1, topic)
		waitFor(t, "the reader", func() bool { return b.readCount() == i+1 })
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "commit", func() bool { return b.Committed() == 3 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.calls != 1 || len(sink.got) != 3 {
		t.Fatalf("%d Writes carried %d records, want 1 Write of 3", sink.calls, len(sink.got))
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("the Write went after %s, before the first record was egress.linger (300ms) old", took)
	}
}

// A full Write does not linger: egress.linger only waits for records that
// could still join it.
func TestPipelineSendsFullWritesWithoutLingering(t *testing.T) {
	b := newMemBuffer()
	sink := &flakySink{}
	lingerPipeline(t, b, sink, 5, time.Hour)
	appendRecords(t, b, 10, func(int) string { return "devices/d/position" })
	deadline := time.Now().Add(2 * time.Second)
	for b.Committed() != 10 {
		if time.Now().After(deadline) {
			t.Fatalf("committed %d of 10 records after 2s: full Writes waited for egress.linger", b.Committed())
		}
		time.Sleep(time.Millisecond)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.calls != 2 {
		t.Fatalf("%d Writes, want 2 of 5 records", sink.calls)
	}
}
