package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// KafkaOptions configure the connection to Kafka (producer, admin client
// and downlink consumer share them). The defaults are chosen for the
// gateway's promise, not kafka-go's: acks=all, no 1 s batch wait, and a
// batch limit that keeps one produce request per partition per Write.
type KafkaOptions struct {
	// Brokers are the bootstrap addresses, host:port. Env: IOTGW_KAFKA_BROKERS, comma-separated.
	Brokers []string `yaml:"brokers"`
	// ClientID names the gateway in broker logs and quotas; default iotgw.
	ClientID string `yaml:"client_id"`
	// Compression is none, gzip, snappy, lz4 or zstd; default none.
	Compression string `yaml:"compression"`
	// BatchTimeout is how long kafka-go lets a partition batch wait for
	// more messages; default 100µs. A Write adds all its messages for a
	// partition to one batch under a lock before this timer can send it, so
	// the egress pipeline's batches go out whole and a longer wait only
	// adds latency.
	BatchTimeout time.Duration `yaml:"batch_timeout"`
	// MaxMessageBytes caps one produce batch per partition; keep it at or
	// below the broker's message.max.bytes. Default 1MiB.
	MaxMessageBytes Size `yaml:"max_message_bytes"`
	// WriteTimeout bounds one produce request; default 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// DialTimeout bounds connecting to a broker; default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// CreateTopics lets the gateway create missing topics with the route's
	// partitions, replication and configs; default true. When false, a
	// missing topic with a fixed name (routes, the DLQ) stops the gateway at
	// start, and records routed to a missing topic go to the DLQ.
	CreateTopics *bool `yaml:"create_topics"`
	// TLS to the brokers.
	TLS KafkaTLSOptions `yaml:"tls"`
	// SASL authentication to the brokers.
	SASL KafkaSASLOptions `yaml:"sasl"`
}

// SetDefaults fills unset fields.
func (o *KafkaOptions) SetDefaults() {
	if o.ClientID == "" {
		o.ClientID = "iotgw"
	}
	if o.Compression == "" {
		o.Compression = "none"
	}
	if o.BatchTimeout == 0 {
		o.BatchTimeout = 100 * time.Microsecond
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 1 << 20
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.CreateTopics == nil {
		t := true
		o.CreateTopics = &t
	}
}

// Validate reports the first invalid field by its config key.
func (o *KafkaOptions) Validate() error {
	if len(o.Brokers) == 0 {
		return errors.New("kafka.brokers: at least one broker address (host:port) is required")
	}
	for _, b := range o.Brokers {
		if b == "" || !strings.Contains(b, ":") {
			return fmt.Errorf("kafka.brokers: %q is not host:port", b)
		}
	}
	if _, err := compressionCodec(o.Compression); err != nil {
		return fmt.Errorf("kafka.compression: %w", err)
	}
	if o.MaxMessageBytes < 1024 {
		return fmt.Errorf("kafka.max_message_bytes: %s is too small (at least 1KiB)", o.MaxMessageBytes)
	}
	if o.BatchTimeout <= 0 {
		return errors.New("kafka.batch_timeout: must be positive")
	}
	if o.WriteTimeout <= 0 {
		return errors.New("kafka.write_timeout: must be positive")
	}
	if o.DialTimeout <= 0 {
		return errors.New("kafka.dial_timeout: must be positive")
	}
	if err := o.TLS.Validate(); err != nil {
		return err
	}
	return o.SASL.Validate()
}

func compressionCodec(name string) (compress.Compression, error) {
	switch name {
	case "", "none":
		return 0, nil
	case "gzip":
		return kafka.Gzip, nil
	case "snappy":
		return kafka.Snappy, nil
	case "lz4":
		return kafka.Lz4, nil
	case "zstd":
		return kafka.Zstd, nil
	}
	return 0, fmt.Errorf("%q is not one of none, gzip, snappy, lz4, zstd", name)
}

// KafkaSink is the Sink backed by one kafka-go Writer.
//
// Ordering. kafka-go runs one goroutine per topic-partition that writes that
// partition's batches one after another, and a WriteMessages call waits for
// every batch it queued. If one call split a partition's messages into two
// batches, the first could fail (not leader, timeout) and the second
// succeed, and the retry of the first would land after it: reordered. So
// Write never lets that happen: it cuts its input into chunks that fit one
// partition batch whatever the partitioning (at most BatchSize messages and
// BatchBytes bytes by kafka-go's own size formula, so writeBatch.add never
// refuses a message), sends the chunks one after another, and stops at the
// first chunk that did not fully succeed, reporting everything after it as
// to be retried. With MaxAttempts 1 kafka-go never retries on its own, so
// the pipeline's retry is the only one, and it resends the failed messages
// in their order before anything newer.
//
// Hangs. A broker that accepts connections and never answers is bounded by
// WriteTimeout (each produce request), DialTimeout (connect and SASL), and
// a deadline on the whole Write; on a timeout the batch may or may not have
// been written, so it is retried whole: duplicates, never gaps or
// reordering, because the partition goroutine still writes the late batch
// before the retried one.
type KafkaSink struct {
	opts      KafkaOptions
	w         *kafka.Writer
	balancer  *sizingBalancer
	meta      *writeMetadata
	maxBatch  int // most messages one WriteMessages call carries (egress.batch_records)
	client    *kafka.Client
	transport *kafka.Transport
	dialer    *kafka.Dialer
	log       *slog.Logger

	// writeMu makes Writes one at a time: the balancer counts one
	// WriteMessages call's messages and sets w.BatchSize, which kafka-go
	// reads while queueing that call. It also guards km, idx and sizes,
	// Write's slices kept from one Write to the next: kafka-go copies the
	// messages it queues, so nothing holds km after WriteMessages.
	writeMu    sync.Mutex
	km         []kafka.Message
	idx, sizes []int

	mu       sync.Mutex
	known    map[string]bool          // topics that exist (checked or created)
	specs    map[string]TopicSpec     // how each topic was asked for, to recreate it
	rejected map[string]rejectedTopic // recent ErrTopicRejected answers
	closed   bool

	explainedAt time.Time // see explain
	explained   error

	// outstanding counts the messages handed to kafka-go whose batch has
	// not completed (see Settled).
	outstanding atomic.Int64
}

var _ Sink = (*KafkaSink)(nil)

// NewKafkaSink builds the producer; it does not connect until first use, so
// the gateway starts (and buffers) while Kafka is down. batchRecords is the
// most messages one Write carries (egress.batch_records).
func NewKafkaSink(opts KafkaOptions, batchRecords int, logger *slog.Logger) (*KafkaSink, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	codec, _ := compressionCodec(opts.Compression)
	transport, err := opts.transport()
	if err != nil {
		return nil, err
	}
	dialer, err := opts.dialer()
	if err != nil {
		return nil, err
	}
	if opts.SASL.Mechanism == SASLPlain && !opts.TLS.Enabled {
		logger.Warn("kafka.sasl.mechanism PLAIN without kafka.tls: the password crosses the network in clear text")
	}
	balancer := &sizingBalancer{counts: map[topicPartition]int{}}
	meta := &writeMetadata{RoundTripper: transport, topics: map[string]kafka.Response{}}
	w := &kafka.Writer{
		Addr: kafka.TCP(opts.Brokers...),
		// The Java client's default partitioner, so Kafka Streams and
		// ksqlDB joins on device id co-partition with our records.
		Balancer:     balancer,
		RequiredAcks: kafka.RequireAll,
		// A partition batch must hold everything one Write sends to that
		// partition (see KafkaSink). The balancer sets it, per
		// WriteMessages call, to the most messages any one partition gets:
		// kafka-go preallocates BatchSize message slots (152 bytes each)
		// for every partition batch, so a fixed egress.batch_records of
		// 2000 cost 300 KB per partition per Write, zeroed, however few
		// messages the Write carried.
		BatchSize:       max(batchRecords, 1),
		BatchBytes:      int64(opts.MaxMessageBytes),
		BatchTimeout:    opts.BatchTimeout,
		WriteTimeout:    opts.WriteTimeout,
		ReadTimeout:     opts.WriteTimeout,
		MaxAttempts:     1, // the pipeline retries with its own backoff, without reordering
		WriteBackoffMin: 10 * time.Millisecond,
		WriteBackoffMax: 100 * time.Millisecond,
		Compression:     codec,
		Transport:       meta,
		// Topics are created by EnsureTopic with the route's settings, not
		// by the broker's auto-create defaults.
		AllowAutoTopicCreation: false,
	}
	balancer.w = w
	s := &KafkaSink{
		opts:      opts,
		w:         w,
		balancer:  balancer,
		meta:      meta,
		maxBatch:  w.BatchSize,
		client:    &kafka.Client{Addr: w.Addr, Timeout: opts.WriteTimeout, Transport: transport},
		transport: transport,
		dialer:    dialer,
		log:       logger,
		known:     map[string]bool{},
		specs:     map[string]TopicSpec{},
		rejected:  map[string]rejectedTopic{},
	}
	w.Completion = func(msgs []kafka.Message, _ error) { s.outstanding.Add(-int64(len(msgs))) }
	return s, nil
}

// Settled reports whether kafka-go holds no message of any Write: every
// Write waits for its batches, except one that gave up at its deadline
// (see KafkaSink, Hangs), whose batches are written late. Until then their
// messages' memory must stay as it is.
func (s *KafkaSink) Settled() bool { return s.outstanding.Load() == 0 }

// writeMessages is w.WriteMessages, counting what kafka-go holds (see
// Settled). WriteMessages queues a call's messages only after balancing
// every one of them, so a call that failed before the balancer saw them
// all queued nothing and no batch of it will complete.
func (s *KafkaSink) writeMessages(ctx context.Context, km ...kafka.Message) error {
	s.balancer.reset()
	s.outstanding.Add(int64(len(km)))
	err := s.w.WriteMessages(ctx, km...)
	if err != nil && s.balancer.calls < len(km) {
		s.outstanding.Add(-int64(len(km)))
	}
	return err
}

// MaxBatchBytes is the largest total (by MessageSize) a Write should carry
// so that it goes out as one produce request per partition; larger Writes
// are split into sequential requests.
func (s *KafkaSink) MaxBatchBytes() int { return int(s.opts.MaxMessageBytes) * 9 / 10 }

// MessageSize is the size kafka-go accounts for a message when it fills a
// partition batch (its Message.totalSize), which the broker's limits are
// compared with. The pipeline cuts its batches by it.
func MessageSize(m *Message) int {
	n := 4 + 1 + 1 + 4 + len(m.Key) + 4 + len(m.Value) + 8
	n += varintLen(int64(len(m.Headers)))
	for _, h := range m.Headers {
		n += varintLen(int64(len(h.Key))) + len(h.Key) + varintLen(int64(len(h.Value))) + len(h.Value)
	}
	return n
}

// varintLen is the length of v as a zigzag varint (Kafka's record format).
func varintLen(v int64) int {
	u := uint64(v<<1) ^ uint64(v>>63)
	n := 1
	for u >= 0x80 {
		u >>= 7
		n++
	}
	return n
}

// writeDeadline bounds one Write: the produce requests are bounded by
// WriteTimeout and connecting by DialTimeout, but waiting for the first
// metadata of a cluster that never answers is bounded only by a context.
func (s *KafkaSink) writeDeadline() time.Duration {
	return s.opts.WriteTimeout + s.opts.DialTimeout + s.opts.BatchTimeout + time.Second
}

// Write implements Sink.
func (s *KafkaSink) Write(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, s.writeDeadline())
	defer cancel()

	werr := &WriteError{}
	km, idx, sizes := s.km[:0], s.idx[:0], s.sizes[:0]
	defer func() {
		clear(km) // drop the references to the messages' memory
		s.km, s.idx, s.sizes = km[:0], idx[:0], sizes[:0]
	}()
	for i := range msgs {
		m := &msgs[i]
		size := MessageSize(m)
		if size > int(s.opts.MaxMessageBytes) {
			werr.Permanent = append(werr.Permanent, i)
			werr.Causes = append(werr.Causes, fmt.Errorf("%w: %d bytes, kafka.max_message_bytes is %s", kafka.MessageSizeTooLarge, size, s.opts.MaxMessageBytes))
			continue
		}
		km = append(km, kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: kafkaHeaders(m.Headers)})
		idx = append(idx, i)
		sizes = append(sizes, size)
	}

	// One metadata answer per topic for the whole Write: the chunks are cut
	// by the partitions kafka-go will choose (see partitionBytes).
	s.meta.forget()
	parts := s.newPartitionBytes(wctx)
	for start := 0; start < len(km); {
		end := start
		parts.reset()
		for end < len(km) && end-start < s.maxBatch && parts.add(&km[end], sizes[end], end == start) {
			end++
		}
		ok := s.writeChunk(wctx, km[start:end], idx[start:end], werr)
		if !ok {
			// Nothing after a chunk that did not fully succeed may be sent
			// before it is: it could share a partition with the failures.
			werr.Retry = append(werr.Retry, idx[end:]...)
			break
		}
		start = end
	}
	if len(werr.Retry) == 0 && len(werr.Permanent) == 0 {
		return nil
	}
	if werr.Err == nil {
		werr.Err = werr.Causes[0]
	}
	if len(werr.Permanent) == 0 && len(werr.Retry) == len(msgs) {
		// Nothing was written: a plain error says so.
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wctx.Err() != nil {
			return fmt.Errorf("kafka write: no answer within %s: %w", s.writeDeadline(), werr.Err)
		}
		return s.explain(ctx, werr.Err)
	}
	return werr
}

// writeChunk sends one chunk (one batch per partition) and sorts its
// messages into werr. It reports whether every message was either written
// or rejected for good, i.e. whether later chunks may be sent.
func (s *KafkaSink) writeChunk(ctx context.Context, km []kafka.Message, idx []int, werr *WriteError) bool {
	err := s.writeMessages(ctx, km...)
	if err == nil {
		return true
	}
	var wes kafka.WriteErrors
	var tooLarge kafka.MessageTooLargeError
	switch {
	case errors.As(err, &wes):
		var isolate []int // positions in km failed by a record-level error on their whole batch
		for j, e := range wes {
			switch {
			case e == nil:
			case recordRejected(e):
				isolate = append(isolate, j)
			case permanent(e):
				werr.Permanent = append(werr.Permanent, idx[j])
				werr.Causes = append(werr.Causes, e)
			default:
				if werr.Err == nil {
					werr.Err = summarize(wes)
				}
				werr.Retry = append(werr.Retry, idx[j])
			}
		}
		ok := len(werr.Retry) == 0
		if len(isolate) > 0 {
			ok = s.isolate(ctx, km, idx, isolate, werr) && ok
		}
		return ok
	case errors.As(err, &tooLarge):
		// MessageSize mirrors kafka-go's size check, so this does not
		// happen; if it did, the message is not written and never will be.
		for j := range km {
			if sameBytes(km[j].Value, tooLarge.Message.Value) && sameBytes(km[j].Key, tooLarge.Message.Key) {
				werr.Permanent = append(werr.Permanent, idx[j])
				werr.Causes = append(werr.Causes, err)
			} else {
				werr.Retry = append(werr.Retry, idx[j])
			}
		}
		werr.Err = err
		return false
	case errors.Is(err, kafka.UnknownTopicOrPartition):
		return s.unknownTopics(ctx, km, idx, err, werr)
	default:
		if werr.Err == nil {
			werr.Err = err
		}
		werr.Retry = append(werr.Retry, idx...)
		return false
	}
}

// isolate resends, one at a time and in order, the messages whose batch
// Kafka refused with a record-level error (too large, invalid record): the
// error is for the batch, so only a batch of one says which message it was.
// It stops at the first message that fails for another reason.
func (s *KafkaSink) isolate(ctx context.Context, km []kafka.Message, idx []int, pos []int, werr *WriteError) bool {
	s.log.Warn("kafka refused a batch for one of its records; resending its records one by one", "records", len(pos), "topic", km[pos[0]].Topic)
	for n, j := range pos {
		err := s.writeMessages(ctx, km[j])
		var wes kafka.WriteErrors
		if errors.As(err, &wes) && len(wes) == 1 {
			err = wes[0]
		}
		switch {
		case err == nil:
		case permanent(err):
			werr.Permanent = append(werr.Permanent, idx[j])
			werr.Causes = append(werr.Causes, err)
		default:
			if werr.Err == nil {
				werr.Err = err
			}
			for _, k := range pos[n:] {
				werr.Retry = append(werr.Retry, idx[k])
			}
			return false
		}
	}
	return true
}

// unknownTopics handles a Write refused because a topic is not in the
// producer's metadata: the topic was deleted, or created elsewhere and not
// yet seen. Each topic of the chunk is checked again; messages for topics
// that cannot exist are rejected for good, the rest retried.
func (s *KafkaSink) unknownTopics(ctx context.Context, km []kafka.Message, idx []int, cause error, werr *WriteError) bool {
	verdict := map[string]error{}
	for _, m := range km {
		if _, done := verdict[m.Topic]; done {
			continue
		}
		s.mu.Lock()
		delete(s.known, m.Topic)
		spec, ok := s.specs[m.Topic]
		s.mu.Unlock()
		if !ok {
			spec = TopicSpec{Name: m.Topic}
		}
		verdict[m.Topic] = s.EnsureTopic(ctx, spec)
	}
	ok := true
	for j, m := range km {
		if err := verdict[m.Topic]; err != nil && errors.Is(err, ErrTopicRejected) {
			werr.Permanent = append(werr.Permanent, idx[j])
			werr.Causes = append(werr.Causes, err)
			continue
		}
		werr.Retry = append(werr.Retry, idx[j])
		ok = false
	}
	if werr.Err == nil {
		werr.Err = cause
	}
	return ok
}

// summarize shortens kafka-go's WriteErrors, which repeats one message per
// record ("[6] Not Leader For Partition: ..." a thousand times), to each
// distinct error once with its count; it still wraps wes for errors.Is.
func summarize(wes kafka.WriteErrors) error {
	var order []string
	count := map[string]int{}
	failed := 0
	for _, e := range wes {
		if e == nil {
			continue
		}
		failed++
		k := e.Error()
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	var sb strings.Builder
	for i, k := range order {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%d × %s", count[k], k)
	}
	return &summarized{wes: wes, msg: fmt.Sprintf("kafka refused %d of %d messages: %s", failed, len(wes), sb.String())}
}

type summarized struct {
	wes kafka.WriteErrors
	msg string
}

func (s *summarized) Error() string { return s.msg }

// Unwrap lets errors.Is and errors.As see the per-message errors.
func (s *summarized) Unwrap() []error { return s.wes }

func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}

// recordRejected reports Kafka errors about a record rather than its topic:
// the broker answers them for the whole partition batch.
func recordRejected(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidTimestamp:
			return true
		}
	}
	return false
}

// permanent reports Kafka errors that no retry will fix.
func permanent(err error) bool {
	if errors.Is(err, ErrTopicRejected) {
		return true
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafka.MessageSizeTooLarge, kafka.InvalidTopic, kafka.TopicAuthorizationFailed,
			kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidRequiredAcks,
			kafka.ClusterAuthorizationFailed, kafka.InvalidTimestamp, kafka.UnsupportedForMessageFormat:
			return true
		}
	}
	return false
}

// Close implements Sink. It waits for produce requests in flight, each
// bounded by kafka.write_timeout.
func (s *KafkaSink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.w.Close()
	s.transport.CloseIdleConnections()
	return err
}

// sizingBalancer is the Java client's default partitioner (murmur2 of the
// key), and it sizes kafka-go's partition batches for the call it
// balances. kafka-go's WriteMessages first balances every message, then
// queues them into partition batches of at most w.BatchSize, which it
// preallocates for each partition; the balancer counts what each partition
// gets and sets w.BatchSize to the largest count, so every partition's
// messages fit one batch (KafkaSink's ordering needs that) and no batch is
// larger than it needs to be. Calls must not overlap (KafkaSink.writeMu).
type sizingBalancer struct {
	murmur kafka.Murmur2Balancer
	w      *kafka.Writer
	counts map[topicPartition]int
	most   int
	calls  int // messages balanced since reset
}

type topicPartition struct {
	topic     string
	partition int
}

func (b *sizingBalancer) reset() {
	clear(b.counts)
	b.most = 0
	b.calls = 0
	b.w.BatchSize = 1
}

// Balance implements kafka.Balancer.
func (b *sizingBalancer) Balance(msg kafka.Message, partitions ...int) int {
	p := b.murmur.Balance(msg, partitions...)
	b.calls++
	k := topicPartition{msg.Topic, p}
	n := b.counts[k] + 1
	b.counts[k] = n
	if n > b.most {
		b.most = n
		b.w.BatchSize = n
	}
	return p
}

// partitionBytes adds up, for one chunk of a Write, the bytes each
// topic-partition gets, so that no partition's share outgrows one kafka-go
// batch (Writer.BatchBytes): kafka-go would split it in two batches, which
// could be written out of order on a failure. It places messages as the
// sizingBalancer will (murmur2 of the key over the topic's partition count,
// from the metadata the Writer will use for this Write). A message without
// a key, or of a topic whose partitions are unknown, counts against every
// partition: the chunk's total is then what is bounded.
type partitionBytes struct {
	s      *KafkaSink
	ctx    context.Context
	limit  int
	murmur kafka.Murmur2Balancer
	topics map[string]*topicBytes // nil when the topic's partitions are unknown
	all    int                    // bytes counted against every partition
	most   int                    // the largest partition's bytes, all included
}

type topicBytes struct {
	parts []int // 0..n-1, for the balancer
	bytes []int // per partition
}

func (s *KafkaSink) newPartitionBytes(ctx context.Context) *partitionBytes {
	return &partitionBytes{s: s, ctx: ctx, limit: int(s.w.BatchBytes), topics: map[string]*topicBytes{}}
}

func (p *partitionBytes) reset() {
	for _, t := range p.topics {
		if t != nil {
			clear(t.bytes)
		}
	}
	p.all, p.most = 0, 0
}

// slot returns the counter m goes to; nil when it counts against all.
func (p *partitionBytes) slot(m *kafka.Message) *int {
	if m.Key == nil {
		return nil
	}
	t, ok := p.topics[m.Topic]
	if !ok {
		if n := p.s.partitionCount(p.ctx, m.Topic); n > 0 {
			t = &topicBytes{parts: make([]int, n), bytes: make([]int, n)}
			for i := range t.parts {
				t.parts[i] = i
			}
		}
		p.topics[m.Topic] = t // nil when unknown: asked once per Write
	}
	if t == nil {
		return nil
	}
	return &t.bytes[p.murmur.Balance(kafka.Message{Key: m.Key}, t.parts...)]
}

// add counts m into the chunk if it fits (or first, as a chunk holds at
// least one message), and reports whether it did.
func (p *partitionBytes) add(m *kafka.Message, size int, first bool) bool {
	c := p.slot(m)
	if c == nil {
		if !first && p.most+size > p.limit {
			return false
		}
		p.all += size
		p.most += size
		return true
	}
	if !first && p.all+*c+size > p.limit {
		return false
	}
	*c += size
	p.most = max(p.most, p.all+*c)
	return true
}

// partitionCount is the topic's partition count as the Writer will see it
// during this Write (writeMetadata), 0 if unknown.
func (s *KafkaSink) partitionCount(ctx context.Context, topic string) int {
	r, err := s.meta.RoundTrip(ctx, s.w.Addr, &metadataAPI.Request{TopicNames: []string{topic}})
	if err != nil {
		return 0
	}
	for _, t := range r.(*metadataAPI.Response).Topics {
		if t.Name == topic && t.ErrorCode == 0 {
			return len(t.Partitions)
		}
	}
	return 0
}

// writeMetadata is the Writer's transport: it answers the metadata
// lookups kafka-go's Writer makes while it balances one WriteMessages call.
// The Writer asks for its topic's partition count once per message, and
// kafka.Transport answers each ask from its cache with a fresh filtered
// copy of the cluster's metadata (allocations per message, a few percent
// of the gateway's CPU); the first answer for a topic is kept for the rest
// of the call, so it is one lookup per topic per Write. forget runs before
// each call (under KafkaSink.writeMu): partition counts and errors are
// never older than the Write. Every other request goes to the transport.
type writeMetadata struct {
	kafka.RoundTripper
	mu     sync.Mutex
	topics map[string]kafka.Response
}

func (c *writeMetadata) forget() {
	c.mu.Lock()
	clear(c.topics)
	c.mu.Unlock()
}

// RoundTrip implements kafka.RoundTripper.
func (c *writeMetadata) RoundTrip(ctx context.Context, addr net.Addr, req kafka.Request) (kafka.Response, error) {
	m, ok := req.(*metadataAPI.Request)
	if !ok || len(m.TopicNames) != 1 {
		return c.RoundTripper.RoundTrip(ctx, addr, req)
	}
	topic := m.TopicNames[0]
	c.mu.Lock()
	r, ok := c.topics[topic]
	c.mu.Unlock()
	if ok {
		return r, nil
	}
	r, err := c.RoundTripper.RoundTrip(ctx, addr, req)
	if err == nil {
		c.mu.Lock()
		c.topics[topic] = r
		c.mu.Unlock()
	}
	return r, err
}

// Header and kafka.Header are the same struct (the conversion below
// compiles only while they are), so a []Header is used as a []kafka.Header
// as it is, without copying every header of every message.
var _ = kafka.Header(Header{})

func kafkaHeaders(h []Header) []kafka.Header {
	return unsafe.Slice((*kafka.Header)(unsafe.Pointer(unsafe.SliceData(h))), len(h))
}
