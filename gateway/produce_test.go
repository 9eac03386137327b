package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/protocol/rawproduce"
)

// fakeCluster is a kafka.RoundTripper that answers metadata (every topic
// but "missing" has three partitions, partition 2 led by broker 2 and the
// others by broker 1) and records the produce requests it gets. The real
// broker's side of the same paths is tested in test/e2e.
type fakeCluster struct {
	mu       sync.Mutex
	metadata int
	requests [][]fakeBatch
	refuse   map[topicPartition]kafka.Error
	block    chan struct{} // when set, produce requests wait for it to close
}

type fakeBatch struct {
	topic     string
	partition int32
	values    []string
}

func (c *fakeCluster) RoundTrip(ctx context.Context, _ net.Addr, req kafka.Request) (kafka.Response, error) {
	switch r := req.(type) {
	case *metadataAPI.Request:
		c.mu.Lock()
		c.metadata++
		c.mu.Unlock()
		res := &metadataAPI.Response{}
		for _, name := range r.TopicNames {
			t := metadataAPI.ResponseTopic{Name: name}
			if name == "missing" {
				t.ErrorCode = int16(kafka.UnknownTopicOrPartition)
			}
			for p := range int32(3) {
				t.Partitions = append(t.Partitions, metadataAPI.ResponsePartition{PartitionIndex: p, LeaderID: 1 + p/2})
			}
			res.Topics = append(res.Topics, t)
		}
		return res, nil
	case *rawproduce.Request:
		var got []fakeBatch
		res := &produceAPI.Response{}
		for _, t := range r.Topics {
			rt := produceAPI.ResponseTopic{Topic: t.Topic}
			for _, p := range t.Partitions {
				b := fakeBatch{topic: t.Topic, partition: p.Partition}
				var rs protocol.RecordSet
				if _, err := rs.ReadFrom(p.RecordSet.Reader); err != nil {
					return nil, fmt.Errorf("fake cluster: %s/%d: %w", t.Topic, p.Partition, err)
				}
				for {
					rec, err := rs.Records.ReadRecord()
					if err == io.EOF {
						break
					}
					if err != nil {
						return nil, err
					}
					v, _ := io.ReadAll(rec.Value)
					b.values = append(b.values, string(v))
				}
				got = append(got, b)
				c.mu.Lock()
				code := c.refuse[topicPartition{t.Topic, p.Partition}]
				c.mu.Unlock()
				rt.Partitions = append(rt.Partitions, produceAPI.ResponsePartition{Partition: p.Partition, ErrorCode: int16(code)})
			}
			res.Topics = append(res.Topics, rt)
		}
		c.mu.Lock()
		c.requests = append(c.requests, got)
		block := c.block
		c.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return res, nil
	}
	return nil, fmt.Errorf("fake cluster: unexpected %T", req)
}

func (c *fakeCluster) produced() [][]fakeBatch {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests)
}

func newFakeSink(t *testing.T, c *fakeCluster, maxBytes Size) *KafkaSink {
	t.Helper()
	s, err := NewKafkaSink(KafkaOptions{Brokers: []string{"127.0.0.1:1"}, MaxMessageBytes: max(maxBytes, 1024), WriteTimeout: 2 * time.Second}, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if maxBytes > 0 {
		s.opts.MaxMessageBytes = maxBytes // below what Validate allows, to cut small chunks
	}
	s.rt = c
	t.Cleanup(func() { s.Close() })
	return s
}

// fakeMessages are n messages over topics, keys truck-0..truck-9, and the
// value i.
func fakeMessages(n int, topics ...string) []Message {
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Topic: topics[i%len(topics)], Key: fmt.Appendf(nil, "truck-%d", i%10), Value: []byte(strconv.Itoa(i))}
	}
	return msgs
}

// partitionOf is murmur2 over 3 partitions, the Java client's choice.
func partitionOf(key []byte) int32 {
	return int32(kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: key}, 0, 1, 2))
}

// checkBatches fails unless every message is in exactly one batch, of its
// topic and murmur2 partition, in the order of msgs.
func checkBatches(t *testing.T, msgs []Message, batches []fakeBatch) {
	t.Helper()
	seen := map[string]bool{}
	for _, b := range batches {
		last := -1
		for _, v := range b.values {
			i, _ := strconv.Atoi(v)
			m := msgs[i]
			if m.Topic != b.topic || partitionOf(m.Key) != b.partition {
				t.Errorf("message %d (%s, key %s) in %s/%d, want partition %d", i, m.Topic, m.Key, b.topic, b.partition, partitionOf(m.Key))
			}
			if i <= last {
				t.Errorf("%s/%d: message %d after %d", b.topic, b.partition, i, last)
			}
			if seen[v] {
				t.Errorf("message %d sent twice", i)
			}
			seen[v], last = true, i
		}
	}
	if len(seen) != len(msgs) {
		t.Errorf("%d of %d messages sent", len(seen), len(msgs))
	}
}

// A Write of small batches goes out as one produce request per partition
// leader, each partition of the leader in it once, its messages in order;
// the metadata is asked once per topic.
func TestProduceOneRequestPerLeader(t *testing.T) {
	c := &fakeCluster{}
	s := newFakeSink(t, c, 0)
	msgs := fakeMessages(60, "a", "b")
	if err := s.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	perLeader := checkRequests(t, msgs, c.produced())
	if perLeader[1] != 1 || perLeader[2] != 1 {
		t.Errorf("requests per leader %v, want one each", perLeader)
	}
	if c.metadata != 2 {
		t.Errorf("%d metadata lookups for a Write to 2 topics, want 2", c.metadata)
	}
	if !s.Settled() {
		t.Error("not settled after a Write that was answered")
	}
}

// Large batches get requests of their own, up to requestsPerBroker per
// leader, so the broker handles them side by side; still no partition is
// in two requests.
func TestProduceSplitsLargeBatches(t *testing.T) {
	c := &fakeCluster{}
	s := newFakeSink(t, c, 1<<20)
	msgs := fakeMessages(1200, "a", "b")
	pad := make([]byte, 1024) // about 200 messages per partition: 200 KiB batches
	for i := range msgs {
		msgs[i].Key = fmt.Appendf(nil, "truck-%d", i%50) // every partition of both topics
		msgs[i].Headers = []Header{{Key: "pad", Value: pad}}
	}
	if err := s.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	// Broker 1 leads four partitions (a/0, a/1, b/0, b/1), broker 2 two.
	perLeader := checkRequests(t, msgs, c.produced())
	if perLeader[1] != requestsPerBroker || perLeader[2] != 2 {
		t.Errorf("requests per leader %v, want %d to broker 1 and 2 to broker 2", perLeader, requestsPerBroker)
	}
}

// checkRequests fails unless reqs, one chunk's requests, hold every
// message once, in order, each partition in one request and each request
// to one leader (partition 2 is led by broker 2, the others by broker 1).
// It returns how many requests each leader got.
func checkRequests(t *testing.T, msgs []Message, reqs [][]fakeBatch) map[int32]int {
	t.Helper()
	var all []fakeBatch
	perLeader := map[int32]int{}
	seen := map[topicPartition]bool{}
	for _, r := range reqs {
		leader := int32(-1)
		for _, b := range r {
			tp := topicPartition{b.topic, b.partition}
			if seen[tp] {
				t.Errorf("%s/%d in two requests, or twice in one", b.topic, b.partition)
			}
			seen[tp] = true
			if l := 1 + b.partition/2; leader >= 0 && l != leader {
				t.Errorf("one request holds partitions of brokers %d and %d", leader, l)
			} else {
				leader = l
			}
		}
		perLeader[leader]++
		all = append(all, r...)
	}
	checkBatches(t, msgs, all)
	return perLeader
}

// Kafka's answer is per partition: a partition refused for a while is
// retried, one refused for good is reported permanent, and the rest is
// written.
func TestProduceErrorsPerPartition(t *testing.T) {
	c := &fakeCluster{refuse: map[topicPartition]kafka.Error{{"a", 1}: kafka.NotLeaderForPartition}}
	for p := range int32(3) {
		c.refuse[topicPartition{"b", p}] = kafka.TopicAuthorizationFailed
	}
	s := newFakeSink(t, c, 0)
	msgs := fakeMessages(60, "a", "b")
	err := s.Write(context.Background(), msgs)
	var we *WriteError
	if !errors.As(err, &we) {
		t.Fatalf("want a WriteError, got %v", err)
	}
	var retry, perm []int
	for i, m := range msgs {
		switch {
		case m.Topic == "b":
			perm = append(perm, i)
		case partitionOf(m.Key) == 1:
			retry = append(retry, i)
		}
	}
	if !slices.Equal(we.Retry, retry) {
		t.Errorf("retry %v, want a/1's messages %v", we.Retry, retry)
	}
	slices.Sort(we.Permanent)
	if !slices.Equal(we.Permanent, perm) || !errors.Is(we.Causes[0], kafka.TopicAuthorizationFailed) {
		t.Errorf("permanent %v (%v), want b's messages %v", we.Permanent, we.Causes[0], perm)
	}
	if !errors.Is(we, kafka.NotLeaderForPartition) {
		t.Errorf("the retry's cause %v does not say not leader", we.Err)
	}
}

// A chunk holds no partition's messages over kafka.max_message_bytes: keys
// spread over partitions fit more than that in total, one hot key does not;
// a topic without metadata fails its chunk without a produce request.
func TestProduceChunks(t *testing.T) {
	keyFor := map[int32][]byte{}
	for i := 0; len(keyFor) < 3; i++ {
		k := fmt.Appendf(nil, "truck-%d", i)
		if _, ok := keyFor[partitionOf(k)]; !ok {
			keyFor[partitionOf(k)] = k
		}
	}
	var spread, hot []Message
	for i := range 30 {
		v := strconv.Itoa(i)
		spread = append(spread, Message{Topic: "a", Key: keyFor[int32(i%3)], Value: []byte(v)})
		hot = append(hot, Message{Topic: "a", Key: keyFor[1], Value: []byte(v)})
	}
	size := MessageSize(&spread[10]) // all the same size but for the values' digits
	for _, c := range []struct {
		name     string
		msgs     []Message
		requests int
	}{
		{"spread over 3 partitions", spread, 2}, // one per leader
		{"one hot key", hot, 3},                 // 10 fit each request
	} {
		fc := &fakeCluster{}
		s := newFakeSink(t, fc, Size(10*size))
		if err := s.Write(context.Background(), c.msgs); err != nil {
			t.Fatal(err)
		}
		reqs := fc.produced()
		if len(reqs) != c.requests {
			t.Errorf("%s: %d produce requests, want %d", c.name, len(reqs), c.requests)
		}
		var all []fakeBatch
		for _, r := range reqs {
			all = append(all, r...)
		}
		checkBatches(t, c.msgs, all)
	}

	fc := &fakeCluster{}
	s := newFakeSink(t, fc, 0)
	msgs := fakeMessages(4, "a", "missing")
	err := s.Write(context.Background(), msgs)
	if !errors.Is(err, kafka.UnknownTopicOrPartition) && !errors.Is(err, ErrTopicRejected) {
		t.Errorf("a Write to a missing topic: %v", err)
	}
	if n := len(fc.produced()); n != 0 {
		t.Errorf("%d produce requests for a chunk with a missing topic, want 0", n)
	}
}

// A Write that gives up before its request is answered leaves the request
// running (its messages outstanding), and the next Write sends nothing
// until it ends: a late write must not land after a newer one.
func TestProduceWaitsForLateRequest(t *testing.T) {
	block := make(chan struct{})
	c := &fakeCluster{block: block}
	s := newFakeSink(t, c, 0)
	msgs := fakeMessages(6, "a")
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := s.Write(short, msgs)
	cancel()
	if err == nil {
		t.Fatal("a Write whose request was not answered succeeded")
	}
	if s.Settled() {
		t.Fatal("settled while a request holds messages")
	}
	sent := len(c.produced())
	second := make(chan error, 1)
	go func() { second <- s.Write(context.Background(), msgs) }()
	time.Sleep(200 * time.Millisecond)
	if n := len(c.produced()); n != sent {
		t.Fatalf("a Write sent %d requests while an earlier one was unanswered", n-sent)
	}
	c.mu.Lock()
	c.block = nil
	c.mu.Unlock()
	close(block)
	select {
	case err := <-second:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second Write did not end after the first's request was answered")
	}
	if !s.Settled() {
		t.Error("not settled after both Writes")
	}
}

// The sink's record batches are byte for byte what kafka-go's encoder
// writes for the same records at the same time; compressed, they hold the
// same records (a compressor's output depends on how its input is cut
// into writes, and kafka-go writes field by field).
func TestRecordBatchMatchesKafkaGo(t *testing.T) {
	now := time.UnixMilli(1764000000123)
	km := []kafka.Message{
		{Key: []byte("truck-0001"), Value: []byte(`{"speed":81.5}`), Headers: []kafka.Header{{Key: "iotgw-id", Value: []byte("01KAY")}, {Key: "empty", Value: []byte{}}, {Key: "nil"}}},
		{Value: []byte("no key")},
		{Key: []byte("k")},
		{Key: []byte{}, Value: []byte{}},
	}
	for i := range 200 { // offset deltas past one varint byte
		km = append(km, kafka.Message{Key: fmt.Appendf(nil, "truck-%d", i), Value: bytes.Repeat([]byte{byte(i)}, i)})
	}
	pos := make([]int, len(km))
	for i := range pos {
		pos[i] = i
	}
	kafkaGo := func(codec compress.Compression) []byte {
		records := make([]protocol.Record, len(km))
		for i, m := range km {
			records[i] = protocol.Record{Time: now, Key: protocol.NewBytes(m.Key), Value: protocol.NewBytes(m.Value), Headers: m.Headers}
		}
		var b bytes.Buffer
		rs := protocol.RecordSet{Version: 2, Attributes: protocol.Attributes(codec) & 0x7, Records: protocol.NewRecordReader(records...)}
		if _, err := rs.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	type record struct {
		offset       int64
		time         int64
		key, value   string
		nilKey, nilV bool
		headers      string
	}
	read := func(b []byte) (protocol.Attributes, []record) {
		t.Helper()
		var rs protocol.RecordSet
		if _, err := rs.ReadFrom(bytes.NewReader(b)); err != nil {
			t.Fatalf("kafka-go cannot read the batch: %v", err)
		}
		var out []record
		for {
			r, err := rs.Records.ReadRecord()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			rec := record{offset: r.Offset, time: r.Time.UnixMilli(), nilKey: r.Key == nil, nilV: r.Value == nil, headers: fmt.Sprintf("%q", r.Headers)}
			if r.Key != nil {
				k, _ := io.ReadAll(r.Key)
				rec.key = string(k)
			}
			if r.Value != nil {
				v, _ := io.ReadAll(r.Value)
				rec.value = string(v)
			}
			out = append(out, rec)
		}
		return rs.Attributes, out
	}
	for _, codec := range []compress.Compression{0, kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd} {
		want := kafkaGo(codec)
		got, _, err := appendRecordBatch([]byte("prefix"), nil, km, pos, now.UnixMilli(), codec)
		if err != nil {
			t.Fatal(err)
		}
		got = got[len("prefix"):]
		if codec == 0 && !bytes.Equal(got, want) {
			t.Errorf("%d bytes differ from kafka-go's %d (first 80: %x, kafka-go %x)", len(got), len(want), got[:80], want[:80])
		}
		ga, gr := read(got)
		wa, wr := read(want)
		if ga != wa || !slices.Equal(gr, wr) || len(gr) != len(km) {
			t.Errorf("%s: read back %d records (attributes %d), kafka-go's batch %d (%d)", codec, len(gr), ga, len(wr), wa)
		}
	}
}

// benchRecords are 4000 records shaped like the gateway's: a device key,
// a 369-byte envelope and eight headers.
func benchRecords() ([]kafka.Message, []int) {
	km := make([]kafka.Message, 4000)
	pos := make([]int, len(km))
	value := bytes.Repeat([]byte("x"), 369)
	for i := range km {
		hs := make([]kafka.Header, 8)
		for j := range hs {
			hs[j] = kafka.Header{Key: fmt.Sprintf("iotgw-h%d", j), Value: []byte("01KAYBENCHVALUE0000000000")}
		}
		km[i] = kafka.Message{Key: fmt.Appendf(nil, "truck-%04d", i%50), Value: value, Headers: hs}
		pos[i] = i
	}
	return km, pos
}

// The sink's encoder against kafka-go's, for one 4000-record batch (go
// test -bench RecordBatch ./gateway/): the ratio is what the sink saves.
func BenchmarkRecordBatch(b *testing.B) {
	km, pos := benchRecords()
	b.Run("iotgw", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf, _, _ = appendRecordBatch(buf[:0], nil, km, pos, 1764000000123, 0)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(km)), "ns/record")
	})
	b.Run("kafka-go", func(b *testing.B) {
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			rs := protocol.RecordSet{Version: 2, Records: &writerRecords{km: km}}
			if _, err := rs.WriteTo(&buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(km)), "ns/record")
	})
}

// writerRecords reads messages as records the way kafka-go's Writer does
// (writer.go), reusing one record and its readers.
type writerRecords struct {
	km         []kafka.Message
	next       int
	rec        protocol.Record
	key, value readCloser
}

type readCloser struct{ bytes.Reader }

func (*readCloser) Close() error { return nil }

func (r *writerRecords) ReadRecord() (*protocol.Record, error) {
	if r.next >= len(r.km) {
		return nil, io.EOF
	}
	m := &r.km[r.next]
	r.next++
	r.rec = protocol.Record{Headers: m.Headers}
	r.key.Reset(m.Key)
	r.rec.Key = &r.key
	r.value.Reset(m.Value)
	r.rec.Value = &r.value
	return &r.rec, nil
}
