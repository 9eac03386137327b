package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// MessageSize must be exactly kafka-go's size accounting, or a Write the
// pipeline sized to fit one partition batch could be split in two.
// kafka-go refuses a message whose size exceeds BatchBytes before any
// network I/O, which shows where its boundary is.
func TestMessageSizeMatchesKafkaGo(t *testing.T) {
	long := strings.Repeat("v", 300)
	huge := strings.Repeat("h", 70000) // 3-byte varint length
	cases := []Message{
		{Topic: "t", Key: []byte("k"), Value: []byte("v")},
		{Topic: "t", Value: []byte(long)},
		{Topic: "t", Key: []byte("truck-7"), Value: []byte(long), Headers: []Header{{"iotgw-id", []byte("01ABC")}, {"x", nil}}},
		{Topic: "t", Key: []byte("d"), Value: []byte(huge), Headers: []Header{{"big", []byte(huge)}, {strings.Repeat("k", 70), []byte(long)}}},
	}
	for i, m := range cases {
		size := MessageSize(&m)
		km := kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value}
		for _, h := range m.Headers {
			km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
		tooLarge := func(batchBytes int) bool {
			w := &kafka.Writer{Addr: kafka.TCP("127.0.0.1:1"), BatchBytes: int64(batchBytes), MaxAttempts: 1,
				Transport: &kafka.Transport{DialTimeout: 10 * time.Millisecond}}
			defer w.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			err := w.WriteMessages(ctx, km)
			var mt kafka.MessageTooLargeError
			return errors.As(err, &mt)
		}
		if tooLarge(size) {
			t.Errorf("case %d: kafka-go finds a message of MessageSize %d larger than BatchBytes %d", i, size, size)
		}
		if !tooLarge(size - 1) {
			t.Errorf("case %d: kafka-go accepts the message with BatchBytes %d: MessageSize %d overestimates", i, size-1, size)
		}
	}
}

func TestKafkaOptionsValidate(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCert(t, dir)
	cases := []struct {
		name string
		mod  func(o *KafkaOptions)
		want string // substring of the error; "" = valid
	}{
		{"defaults", func(o *KafkaOptions) {}, ""},
		{"no brokers", func(o *KafkaOptions) { o.Brokers = nil }, "kafka.brokers"},
		{"bad compression", func(o *KafkaOptions) { o.Compression = "brotli" }, "kafka.compression"},
		{"negative write timeout", func(o *KafkaOptions) { o.WriteTimeout = -1 }, "kafka.write_timeout"},
		{"sasl plain", func(o *KafkaOptions) { o.SASL = KafkaSASLOptions{Mechanism: "plain", Username: "u", Password: "p"} }, ""},
		{"sasl scram", func(o *KafkaOptions) {
			o.SASL = KafkaSASLOptions{Mechanism: "SCRAM-SHA-512", Username: "u", Password: "p"}
		}, ""},
		{"sasl unknown", func(o *KafkaOptions) { o.SASL = KafkaSASLOptions{Mechanism: "GSSAPI", Username: "u", Password: "p"} }, "kafka.sasl.mechanism"},
		{"sasl no user", func(o *KafkaOptions) { o.SASL = KafkaSASLOptions{Mechanism: "PLAIN", Password: "p"} }, "kafka.sasl.username"},
		{"sasl no password", func(o *KafkaOptions) { o.SASL = KafkaSASLOptions{Mechanism: "SCRAM-SHA-256", Username: "u"} }, "kafka.sasl.password"},
		{"tls files", func(o *KafkaOptions) {
			o.TLS = KafkaTLSOptions{Enabled: true, CAFile: caFile, CertFile: certFile, KeyFile: keyFile}
		}, ""},
		{"tls missing ca", func(o *KafkaOptions) {
			o.TLS = KafkaTLSOptions{Enabled: true, CAFile: filepath.Join(dir, "nope.pem")}
		}, "kafka.tls.ca_file"},
		{"tls ca not pem", func(o *KafkaOptions) { o.TLS = KafkaTLSOptions{Enabled: true, CAFile: keyFile + ".txt"} }, "kafka.tls.ca_file"},
		{"tls cert without key", func(o *KafkaOptions) { o.TLS = KafkaTLSOptions{Enabled: true, CertFile: certFile} }, "kafka.tls.cert_file"},
		{"tls files but disabled", func(o *KafkaOptions) { o.TLS = KafkaTLSOptions{CAFile: caFile} }, "kafka.tls.enabled"},
	}
	if err := os.WriteFile(keyFile+".txt", []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := KafkaOptions{Brokers: []string{"127.0.0.1:9092"}}
			c.mod(&o)
			o.SetDefaults()
			err := o.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want one naming %s", err, c.want)
			}
			if err == nil {
				if _, err := NewKafkaSink(o, 10, nil); err != nil {
					t.Fatalf("NewKafkaSink: %v", err)
				}
			}
		})
	}
}

// writeTestCert writes a self-signed CA (also used as the client
// certificate) and its key.
func writeTestCert(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "iotgw test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert = filepath.Join(dir, "cert.pem")
	key = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, cert, key
}

// A Write whose messages exceed one partition batch goes out as sequential
// chunks; when a chunk fails, nothing after it is sent and it is all
// reported for retry, in order.
func TestKafkaSinkStopsAfterFailedChunk(t *testing.T) {
	o := KafkaOptions{Brokers: []string{"127.0.0.1:1"}, MaxMessageBytes: 4096, WriteTimeout: 200 * time.Millisecond, DialTimeout: 50 * time.Millisecond}
	s, err := NewKafkaSink(o, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	msgs := make([]Message, 7)
	for i := range msgs {
		msgs[i] = Message{Topic: "t", Key: []byte("k"), Value: make([]byte, 100)}
	}
	err = s.Write(context.Background(), msgs)
	if err == nil {
		t.Fatal("write to an unreachable broker succeeded")
	}
	var we *WriteError
	if errors.As(err, &we) {
		t.Fatalf("nothing was written, want a plain error, got %v", err)
	}
	if !s.Settled() {
		t.Error("not settled after a Write that queued nothing (no metadata)")
	}

	// A message over kafka.max_message_bytes is rejected for good up front;
	// the rest is still tried (and here fails for retry).
	msgs[2].Value = make([]byte, 5000)
	err = s.Write(context.Background(), msgs)
	if !errors.As(err, &we) {
		t.Fatalf("want a WriteError, got %v", err)
	}
	if len(we.Permanent) != 1 || we.Permanent[0] != 2 || !errors.Is(we.Causes[0], kafka.MessageSizeTooLarge) {
		t.Errorf("permanent = %v (%v), want [2] too large", we.Permanent, we.Causes)
	}
	if len(we.Retry) != 6 {
		t.Errorf("retry = %v, want the other 6", we.Retry)
	}
	if !s.Settled() {
		t.Error("not settled after a Write that queued nothing")
	}
}

func TestPermanentErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{kafka.MessageSizeTooLarge, true},
		{kafka.TopicAuthorizationFailed, true},
		{kafka.InvalidTopic, true},
		{kafka.NotLeaderForPartition, false},
		{kafka.NotEnoughReplicas, false},
		{kafka.RequestTimedOut, false},
		{context.DeadlineExceeded, false},
		{ErrTopicRejected, true},
	} {
		if got := permanent(c.err); got != c.want {
			t.Errorf("permanent(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestSummarizeWriteErrors(t *testing.T) {
	wes := kafka.WriteErrors{kafka.NotLeaderForPartition, nil, kafka.NotLeaderForPartition, kafka.RequestTimedOut}
	err := summarize(wes)
	want := "kafka refused 3 of 4 messages: 2 × [6] Not Leader For Partition"
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "; 1 × [7] Request Timed Out") {
		t.Errorf("summary = %q", err)
	}
	if !errors.Is(err, kafka.RequestTimedOut) {
		t.Error("summary hides the per-message errors from errors.Is")
	}
}

// The balancer is murmur2, and it sizes kafka-go's partition batches to the
// most messages one partition gets in the call, so no partition's messages
// are split over two batches (the ordering KafkaSink relies on) and no batch
// preallocates egress.batch_records slots for a handful of messages.
func TestSizingBalancer(t *testing.T) {
	w := &kafka.Writer{}
	b := &sizingBalancer{w: w, counts: map[topicPartition]int{}}
	var plain kafka.Murmur2Balancer
	parts := []int{0, 1, 2}
	for _, n := range []int{1, 7, 500} {
		b.reset()
		want := map[topicPartition]int{}
		for i := range n {
			m := kafka.Message{Topic: []string{"a", "b"}[i%2], Key: fmt.Appendf(nil, "truck-%04d", i%13)}
			p := b.Balance(m, parts...)
			if q := plain.Balance(m, parts...); p != q {
				t.Fatalf("key %s: partition %d, murmur2 says %d", m.Key, p, q)
			}
			want[topicPartition{m.Topic, p}]++
		}
		most := 0
		for _, c := range want {
			most = max(most, c)
		}
		if w.BatchSize != most {
			t.Errorf("%d messages: BatchSize %d, want the largest partition's count %d", n, w.BatchSize, most)
		}
	}
}

// countingTransport answers metadata requests with one topic of three
// partitions and counts the requests it sees by type.
type countingTransport struct {
	metadata, other int
	fail            error
}

func (c *countingTransport) RoundTrip(_ context.Context, _ net.Addr, req kafka.Request) (kafka.Response, error) {
	m, ok := req.(*metadataAPI.Request)
	if !ok {
		c.other++
		return nil, nil
	}
	c.metadata++
	if c.fail != nil {
		return nil, c.fail
	}
	parts := make([]metadataAPI.ResponsePartition, 3)
	topics := make([]metadataAPI.ResponseTopic, len(m.TopicNames))
	for i, t := range m.TopicNames {
		topics[i] = metadataAPI.ResponseTopic{Name: t, Partitions: parts}
	}
	return &metadataAPI.Response{Topics: topics}, nil
}

// The Writer's per-message metadata lookups reach the transport once per
// topic between two forgets; failures and other requests are not kept.
func TestWriteMetadata(t *testing.T) {
	next := &countingTransport{}
	c := &writeMetadata{RoundTripper: next, topics: map[string]kafka.Response{}}
	ask := func(topics ...string) kafka.Response {
		t.Helper()
		r, err := c.RoundTrip(context.Background(), nil, &metadataAPI.Request{TopicNames: topics})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for range 100 {
		ask("a")
		ask("b")
	}
	if next.metadata != 2 {
		t.Fatalf("100 lookups each of 2 topics reached the transport %d times, want 2", next.metadata)
	}
	if r := ask("b").(*metadataAPI.Response); len(r.Topics) != 1 || r.Topics[0].Name != "b" || len(r.Topics[0].Partitions) != 3 {
		t.Fatalf("kept answer for b = %+v", r)
	}
	ask("a", "b") // not a Writer's lookup: always passed on
	ask("a", "b")
	if next.metadata != 4 {
		t.Fatalf("two-topic lookups: transport saw %d metadata requests, want 4", next.metadata)
	}
	c.forget()
	ask("a")
	if next.metadata != 5 {
		t.Fatalf("after forget: transport saw %d metadata requests, want 5", next.metadata)
	}
	c.forget()
	next.fail = errors.New("broker down")
	for range 2 {
		if _, err := c.RoundTrip(context.Background(), nil, &metadataAPI.Request{TopicNames: []string{"a"}}); err == nil {
			t.Fatal("a failed lookup returned no error")
		}
	}
	if next.metadata != 7 {
		t.Fatalf("failed lookups were kept: transport saw %d metadata requests, want 7", next.metadata)
	}
	if _, err := c.RoundTrip(context.Background(), nil, &produceAPI.Request{}); err != nil || next.other != 1 {
		t.Fatalf("a produce request: err %v, transport saw %d", err, next.other)
	}
}

// A chunk is bounded per partition, as kafka-go places its messages: keys
// spread over partitions fit more than one batch's bytes in total, one
// hot key does not; unkeyed messages, and topics whose partitions are
// unknown, count against every partition.
func TestPartitionBytes(t *testing.T) {
	next := &countingTransport{}
	s := &KafkaSink{w: &kafka.Writer{BatchBytes: 1000}, meta: &writeMetadata{RoundTripper: next, topics: map[string]kafka.Response{}}}
	var murmur kafka.Murmur2Balancer
	partOf := func(key string) int { return murmur.Balance(kafka.Message{Key: []byte(key)}, 0, 1, 2) }
	// Keys for each of the 3 partitions.
	keys := map[int]string{}
	for i := 0; len(keys) < 3; i++ {
		k := fmt.Sprintf("truck-%d", i)
		if _, ok := keys[partOf(k)]; !ok {
			keys[partOf(k)] = k
		}
	}
	chunk := func(msgs []kafka.Message, size int) int { // messages in the first chunk
		t.Helper()
		p := s.newPartitionBytes(context.Background())
		n := 0
		for n < len(msgs) && p.add(&msgs[n], size, n == 0) {
			n++
		}
		return n
	}
	msg := func(topic, key string) kafka.Message {
		m := kafka.Message{Topic: topic}
		if key != "" {
			m.Key = []byte(key)
		}
		return m
	}
	var spread, hot, unkeyed, mixed []kafka.Message
	for i := range 30 {
		spread = append(spread, msg("a", keys[i%3]))
		hot = append(hot, msg("a", keys[1]))
		unkeyed = append(unkeyed, msg("a", ""))
	}
	mixed = append(mixed, msg("a", keys[0]), msg("a", keys[0]), msg("a", ""), msg("a", keys[1]), msg("a", keys[0]))
	cases := []struct {
		name string
		msgs []kafka.Message
		size int
		want int
	}{
		{"spread over 3 partitions", spread, 100, 30},
		{"one hot key", hot, 100, 10},
		{"unkeyed", unkeyed, 100, 10},
		{"keyed then unkeyed", mixed, 300, 4}, // 0 holds 600 and 300 count for all: 1 still fits, 0 does not
		{"a first message larger than the limit", hot, 1500, 1},
	}
	for _, c := range cases {
		if got := chunk(c.msgs, c.size); got != c.want {
			t.Errorf("%s: first chunk holds %d messages, want %d", c.name, got, c.want)
		}
	}
	next.fail = errors.New("no metadata")
	s.meta.forget()
	if got := chunk(spread, 100); got != 10 {
		t.Errorf("partitions unknown: first chunk holds %d messages, want 10 (bounded in total)", got)
	}
}
