package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// KafkaOptions configure the connection to Kafka (producer, admin client
// and downlink consumer share them). The defaults are chosen for the
// gateway's promise, not kafka-go's: acks=all, no batch wait, and a batch
// limit the broker accepts (one record batch per partition per request).
type KafkaOptions struct {
	// Brokers are the bootstrap addresses, host:port. Env: IOTGW_KAFKA_BROKERS, comma-separated.
	Brokers []string `yaml:"brokers"`
	// ClientID names the gateway in broker logs and quotas; default iotgw.
	ClientID string `yaml:"client_id"`
	// Compression is none, gzip, snappy, lz4 or zstd; default none.
	Compression string `yaml:"compression"`
	// BatchTimeout no longer has an effect: it was how long kafka-go's
	// Writer let a partition batch wait. While one Write is in flight the
	// next accumulates, so batches grow with the load, and a Write that is
	// not full waits egress.linger for more. Accepted (and warned about)
	// so older configurations load.
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
	if o.BatchTimeout < 0 {
		return errors.New("kafka.batch_timeout: must not be negative (and has no effect)")
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

// KafkaSink is the Sink: one producer per gateway on kafka-go's Transport,
// acks=all, murmur2 partitioning, the configured compression. Each Write
// goes out as produce requests that carry one record batch per partition:
// one request per partition leader, as the Java client batches, or for
// large Writes up to requestsPerBroker per leader, its partitions split
// between them (produce.go says why not kafka-go's Writer).
//
// Ordering. A Write is cut into chunks in which no partition's messages
// outgrow one record batch (kafka.max_message_bytes). A chunk's requests
// go to different leaders with different partitions, and the next chunk
// waits for all their answers; Write stops at the first chunk that did not
// fully succeed and reports everything after it as to be retried. Nothing
// retries on its own below the pipeline, which resends the failed messages
// in their order before anything newer. So one partition never has two
// batches in flight, and none can overtake another.
//
// Hangs. A broker that accepts connections and never answers is bounded by
// WriteTimeout (each produce request), DialTimeout (connect and SASL), and
// a deadline on the whole Write. A request the Write gave up on keeps its
// own WriteTimeout clock and may still be written: its messages count as
// outstanding (Settled) and the next Write sends nothing before its answer
// or failure (awaitLate). The retry is then a duplicate, never a gap or a
// reordering.
type KafkaSink struct {
	opts      KafkaOptions
	codec     compress.Compression
	murmur    kafka.Murmur2Balancer
	rt        kafka.RoundTripper // the transport; tests put a fake here
	client    *kafka.Client
	transport *kafka.Transport
	dialer    *kafka.Dialer
	log       *slog.Logger

	// writeMu makes Writes one at a time, and guards what one Write keeps
	// for the next: km, idx, sizes and parts (the messages and their
	// positions, sizes and partitions), layouts (cleared by each Write),
	// batches and batchOf (one chunk's partition batches), scratch, and
	// late.
	writeMu    sync.Mutex
	km         []kafka.Message
	idx, sizes []int
	parts      []int32
	layouts    map[string]*topicLayout
	batches    []partitionBatch
	batchOf    map[topicPartition]int
	scratch    []byte          // a batch's records before compression
	late       []chan struct{} // requests of a Write that gave up, not answered yet

	mu       sync.Mutex
	known    map[string]bool          // topics that exist (checked or created)
	specs    map[string]TopicSpec     // how each topic was asked for, to recreate it
	rejected map[string]rejectedTopic // recent ErrTopicRejected answers
	closed   bool

	explainedAt time.Time // see explain
	explained   error

	// outstanding counts the messages in produce requests not yet answered
	// (see Settled); inflight counts those requests, for Close.
	outstanding atomic.Int64
	inflight    sync.WaitGroup
}

var _ Sink = (*KafkaSink)(nil)

// NewKafkaSink builds the producer; it does not connect until first use, so
// the gateway starts (and buffers) while Kafka is down. batchRecords is the
// most messages one Write carries (egress.batch_records); the slices a
// Write keeps are sized for it.
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
	if opts.BatchTimeout > 0 {
		logger.Warn("kafka.batch_timeout has no effect: egress.linger is how long a Kafka write that is not full waits for more records; remove kafka.batch_timeout from the configuration")
	}
	if opts.SASL.Mechanism == SASLPlain && !opts.TLS.Enabled {
		logger.Warn("kafka.sasl.mechanism PLAIN without kafka.tls: the password crosses the network in clear text")
	}
	n := max(batchRecords, 1)
	return &KafkaSink{
		opts:      opts,
		codec:     codec,
		rt:        transport,
		client:    &kafka.Client{Addr: kafka.TCP(opts.Brokers...), Timeout: opts.WriteTimeout, Transport: transport},
		transport: transport,
		dialer:    dialer,
		log:       logger,
		km:        make([]kafka.Message, 0, n),
		idx:       make([]int, 0, n),
		sizes:     make([]int, 0, n),
		parts:     make([]int32, 0, n),
		layouts:   map[string]*topicLayout{},
		batchOf:   map[topicPartition]int{},
		known:     map[string]bool{},
		specs:     map[string]TopicSpec{},
		rejected:  map[string]rejectedTopic{},
	}, nil
}

// Settled reports whether every produce request of every Write has been
// answered or has failed: every Write waits for its requests' answers,
// except one that gave up at its deadline (see KafkaSink, Hangs), whose
// requests run on. The requests carry their own encoded copy of the
// records (appendRecordBatch), so the messages' memory is no longer read
// once Write returns; the pipeline still reuses it only when settled,
// which costs nothing while Kafka answers.
func (s *KafkaSink) Settled() bool { return s.outstanding.Load() == 0 }

// MaxBatchBytes is the largest total (by MessageSize) a Write should carry
// so that no partition's share outgrows one record batch; larger Writes
// may be split into sequential chunks.
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
	return s.opts.WriteTimeout + s.opts.DialTimeout + time.Second
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
	km, idx, sizes, parts := s.km[:0], s.idx[:0], s.sizes[:0], s.parts[:0]
	defer func() {
		s.idx, s.sizes, s.parts = idx[:0], sizes[:0], parts[:0]
		clear(km) // drop the references to the messages' memory
		s.km = km[:0]
	}()
	clear(s.layouts) // one metadata answer per topic per Write
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
		parts = append(parts, s.partition(wctx, &km[len(km)-1]))
	}

	for start := 0; start < len(km); {
		end := s.chunkEnd(wctx, km, parts, sizes, start)
		ok := s.writeChunk(wctx, km[start:end], parts[start:end], sizes[start:end], idx[start:end], werr)
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
func (s *KafkaSink) writeChunk(ctx context.Context, km []kafka.Message, parts []int32, sizes, idx []int, werr *WriteError) bool {
	err := s.produce(ctx, km, parts, sizes)
	if err == nil {
		return true
	}
	var wes kafka.WriteErrors
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
			ok = s.isolate(ctx, km, parts, sizes, idx, isolate, werr) && ok
		}
		return ok
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
func (s *KafkaSink) isolate(ctx context.Context, km []kafka.Message, parts []int32, sizes, idx, pos []int, werr *WriteError) bool {
	s.log.Warn("kafka refused a batch for one of its records; resending its records one by one", "records", len(pos), "topic", km[pos[0]].Topic)
	for n, j := range pos {
		err := s.produce(ctx, km[j:j+1], parts[j:j+1], sizes[j:j+1])
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
	s.inflight.Wait()
	s.transport.CloseIdleConnections()
	return nil
}

// Header and kafka.Header are the same struct (the conversion below
// compiles only while they are), so a []Header is used as a []kafka.Header
// as it is, without copying every header of every message.
var _ = kafka.Header(Header{})

func kafkaHeaders(h []Header) []kafka.Header {
	return unsafe.Slice((*kafka.Header)(unsafe.Pointer(unsafe.SliceData(h))), len(h))
}
