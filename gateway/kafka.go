package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// KafkaOptions configure the producer. The defaults are chosen for the
// gateway's promise, not kafka-go's: acks=all, no 1 s batch wait, and a
// batch limit that keeps one produce request per partition per egress batch.
type KafkaOptions struct {
	// Brokers are the bootstrap addresses, host:port. Env: IOTGW_KAFKA_BROKERS, comma-separated.
	Brokers []string `yaml:"brokers"`
	// ClientID names the gateway in broker logs and quotas; default iotgw.
	ClientID string `yaml:"client_id"`
	// Compression is none, gzip, snappy, lz4 or zstd; default none.
	Compression string `yaml:"compression"`
	// BatchTimeout is how long a partition batch waits to fill; default
	// 1ms. The egress pipeline already batches, so this only adds latency.
	BatchTimeout time.Duration `yaml:"batch_timeout"`
	// MaxMessageBytes caps one produce batch per partition; keep it at or
	// below the broker's message.max.bytes. Default 1MiB.
	MaxMessageBytes Size `yaml:"max_message_bytes"`
	// WriteTimeout bounds one produce request; default 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// DialTimeout bounds connecting to a broker; default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// CreateTopics lets the gateway create missing topics with the route's
	// partitions and replication; default true.
	CreateTopics *bool `yaml:"create_topics"`
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
		o.BatchTimeout = time.Millisecond
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
	if o.BatchTimeout < 0 || o.WriteTimeout <= 0 || o.DialTimeout <= 0 {
		return errors.New("kafka: batch_timeout must not be negative, write_timeout and dial_timeout must be positive")
	}
	return nil
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
type KafkaSink struct {
	opts   KafkaOptions
	w      *kafka.Writer
	client *kafka.Client
	log    *slog.Logger

	mu      sync.Mutex
	created map[string]bool
	closed  bool
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
	transport := &kafka.Transport{
		ClientID:    opts.ClientID,
		DialTimeout: opts.DialTimeout,
		IdleTimeout: 60 * time.Second,
		MetadataTTL: 30 * time.Second,
	}
	w := &kafka.Writer{
		Addr: kafka.TCP(opts.Brokers...),
		// The Java client's default partitioner, so Kafka Streams and
		// ksqlDB joins on device id co-partition with our records.
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		// A partition batch must hold everything one egress batch sends to
		// that partition: two batches for one partition could be retried
		// out of order. The pipeline keeps each Write under MaxMessageBytes.
		// (kafka-go preallocates BatchSize slots per partition batch, so
		// this is the egress batch size, not "unlimited".)
		BatchSize:       max(batchRecords, 1),
		BatchBytes:      int64(opts.MaxMessageBytes),
		BatchTimeout:    opts.BatchTimeout,
		WriteTimeout:    opts.WriteTimeout,
		ReadTimeout:     opts.WriteTimeout,
		MaxAttempts:     1, // the pipeline retries with its own backoff, without reordering
		WriteBackoffMin: 10 * time.Millisecond,
		WriteBackoffMax: 100 * time.Millisecond,
		Compression:     codec,
		Transport:       transport,
		// Topics are created by EnsureTopic with the route's settings, not
		// by the broker's auto-create defaults.
		AllowAutoTopicCreation: false,
	}
	return &KafkaSink{
		opts:    opts,
		w:       w,
		client:  &kafka.Client{Addr: w.Addr, Timeout: opts.WriteTimeout, Transport: transport},
		log:     logger,
		created: map[string]bool{},
	}, nil
}

// MaxBatchBytes is the largest total a Write may carry so that no partition
// batch exceeds the broker limit.
func (s *KafkaSink) MaxBatchBytes() int { return int(s.opts.MaxMessageBytes) * 9 / 10 }

// MessageSize estimates a message's size in a Kafka record batch, the same
// way the pipeline sizes its batches.
func MessageSize(m *Message) int {
	n := len(m.Key) + len(m.Value) + 32
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value) + 4
	}
	return n
}

// EnsureTopic implements Sink.
func (s *KafkaSink) EnsureTopic(ctx context.Context, spec TopicSpec) error {
	s.mu.Lock()
	done := s.created[spec.Name]
	s.mu.Unlock()
	if done || !*s.opts.CreateTopics {
		return nil
	}
	parts := spec.Partitions
	if parts == 0 {
		parts = DefaultPartitions
	}
	rf := spec.ReplicationFactor
	if rf == 0 {
		rf = -1
	}
	tc := kafka.TopicConfig{Topic: spec.Name, NumPartitions: parts, ReplicationFactor: rf}
	for k, v := range spec.Config {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	resp, err := s.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{tc}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", spec.Name, err)
	}
	if terr := resp.Errors[spec.Name]; terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", spec.Name, terr)
	} else if terr == nil {
		s.log.Info("created kafka topic", "topic", spec.Name, "partitions", parts, "replication_factor", rf)
	}
	s.mu.Lock()
	s.created[spec.Name] = true
	s.mu.Unlock()
	return nil
}

// Write implements Sink.
func (s *KafkaSink) Write(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	werr := &WriteError{}
	km := make([]kafka.Message, 0, len(msgs))
	idx := make([]int, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if MessageSize(m) > int(s.opts.MaxMessageBytes) {
			werr.Permanent = append(werr.Permanent, i)
			werr.Causes = append(werr.Causes, fmt.Errorf("%w: about %d bytes, kafka.max_message_bytes is %s", kafka.MessageSizeTooLarge, MessageSize(m), s.opts.MaxMessageBytes))
			continue
		}
		hs := make([]kafka.Header, len(m.Headers))
		for j, h := range m.Headers {
			hs[j] = kafka.Header{Key: h.Key, Value: h.Value}
		}
		km = append(km, kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: hs})
		idx = append(idx, i)
	}
	var err error
	if len(km) > 0 {
		err = s.w.WriteMessages(ctx, km...)
	}
	var wes kafka.WriteErrors
	var tooLarge kafka.MessageTooLargeError
	switch {
	case err == nil:
	case errors.As(err, &wes):
		for j, e := range wes {
			if e == nil {
				continue
			}
			if werr.Err == nil {
				werr.Err = e
			}
			if permanent(e) {
				werr.Permanent = append(werr.Permanent, idx[j])
				werr.Causes = append(werr.Causes, e)
			} else {
				werr.Retry = append(werr.Retry, idx[j])
			}
		}
	case errors.As(err, &tooLarge):
		// kafka-go refused the whole call for one message; find it by its
		// value's backing array and let the caller retry the rest.
		for j := range km {
			if sameBytes(km[j].Value, tooLarge.Message.Value) && sameBytes(km[j].Key, tooLarge.Message.Key) {
				werr.Permanent = append(werr.Permanent, idx[j])
				werr.Causes = append(werr.Causes, err)
			} else {
				werr.Retry = append(werr.Retry, idx[j])
			}
		}
		werr.Err = err
	default:
		return err
	}
	if len(werr.Retry) == 0 && len(werr.Permanent) == 0 {
		return nil
	}
	if werr.Err == nil {
		werr.Err = werr.Causes[0]
	}
	return werr
}

func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}

// permanent reports Kafka errors that no retry will fix.
func permanent(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafka.MessageSizeTooLarge, kafka.InvalidTopic, kafka.TopicAuthorizationFailed,
			kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidRequiredAcks,
			kafka.ClusterAuthorizationFailed:
			return true
		}
	}
	return false
}

// Close implements Sink.
func (s *KafkaSink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.w.Close()
}
