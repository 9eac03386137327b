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
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// MessageSize bounds what a message takes in a record batch: the chunks
// a Write is cut into add it up against kafka.max_message_bytes, which the
// broker compares with each partition's batch.
func TestMessageSizeBoundsTheRecordBatch(t *testing.T) {
	long := strings.Repeat("v", 300)
	huge := strings.Repeat("h", 70000) // 3-byte varint length
	cases := []Message{
		{Topic: "t", Key: []byte("k"), Value: []byte("v")},
		{Topic: "t", Value: []byte(long)},
		{Topic: "t", Key: []byte("truck-7"), Value: []byte(long), Headers: []Header{{"iotgw-id", []byte("01ABC")}, {"x", nil}}},
		{Topic: "t", Key: []byte("d"), Value: []byte(huge), Headers: []Header{{"big", []byte(huge)}, {strings.Repeat("k", 70), []byte(long)}}},
	}
	batchBytes := func(msgs []Message) int {
		t.Helper()
		km := make([]kafka.Message, len(msgs))
		pos := make([]int, len(msgs))
		for i, m := range msgs {
			km[i] = kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: kafkaHeaders(m.Headers)}
			pos[i] = i
		}
		b, _, err := appendRecordBatch(nil, nil, km, pos, 1764000000000, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	const header = 4 + 61 // the record set's length, the v2 batch header
	total := 0
	for i, m := range cases {
		size := MessageSize(&m)
		total += size
		if got := batchBytes(cases[i:i+1]) - header; got > size || got <= 0 {
			t.Errorf("case %d: %d bytes in a record batch, MessageSize says %d", i, got, size)
		}
	}
	if got := batchBytes(cases) - header; got > total {
		t.Errorf("all cases: %d bytes in one record batch, MessageSize adds up to %d", got, total)
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
