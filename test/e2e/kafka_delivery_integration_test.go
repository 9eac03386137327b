//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/gateway"
)

// topicConfig reads topic configs (DescribeConfigs) and the partition
// count.
func topicConfig(t *testing.T, broker, topic string, names ...string) (int, map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := freshClient(broker)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %v %+v", topic, err, md)
	}
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names}}})
	if err != nil || len(resp.Resources) != 1 || resp.Resources[0].Error != nil {
		t.Fatalf("describe configs of %s: %v %+v", topic, err, resp)
	}
	cfg := map[string]string{}
	for _, e := range resp.Resources[0].ConfigEntries {
		cfg[e.ConfigName] = e.ConfigValue
	}
	return len(md.Topics[0].Partitions), cfg
}

// TestKafkaDeadLettersAndTopics runs the binary with routes that create
// topics with their own settings, a JSON Schema for one stream, and a topic
// whose max.message.bytes is small. Records Kafka refuses, records no route
// matches and payloads that fail their schema land in the DLQ with the
// error and the original metadata; the records around them are delivered
// in order.
func TestKafkaDeadLettersAndTopics(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	dir := t.TempDir()
	schema := filepath.Join(dir, "position.json")
	if err := os.WriteFile(schema, []byte(`{"type":"object","required":["seq","lat"],
		"properties":{"seq":{"type":"integer"},"lat":{"type":"number","minimum":-90,"maximum":90}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
gateway:
  id: e2e-dlq
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
egress:
  dlq: %s.dlq
  schemas:
    position: %s
routes:
  - match: devices/{device}/big
    topic: %s.big
    partitions: 2
    config:
      max.message.bytes: "2048"
  - match: devices/{device}/{stream}
    topic: %s.{stream}
    partitions: 5
    min_insync_replicas: 1
    config:
      retention.ms: "3600000"
`, broker, filepath.Join(dir, "buffer"), prefix, schema, prefix, prefix)
	gw := startGateway(t, cfg)

	conn, err := net.Dial("tcp", gw.MQTT)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	pub := func(topic, payload string) {
		t.Helper()
		if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload),
			Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "trace", Value: "t-" + topic}}}}); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	big := `{"seq":2,"blob":"` + strings.Repeat("x", 8000) + `"}`
	pub("devices/d1/big", `{"seq":1}`)
	pub("devices/d1/big", big)
	pub("devices/d1/big", `{"seq":3}`)
	pub("devices/d1/a/b", `{"seq":4}`)                 // no route
	pub("devices/d1/position", `{"seq":5,"lat":53.5}`) // valid
	pub("devices/d1/position", `{"seq":6,"lat":91}`)   // out of range
	pub("devices/d1/position", `not json`)             // not JSON
	pub("devices/d1/position", `{"seq":8,"lat":1}`)    // valid
	_ = c.Disconnect(&paho.Disconnect{})

	dlq := consume(t, broker, prefix+".dlq", 4, 60*time.Second)
	bigs := consume(t, broker, prefix+".big", 2, 30*time.Second)
	positions := consume(t, broker, prefix+".position", 2, 30*time.Second)
	if len(dlq) != 4 || len(bigs) != 2 || len(positions) != 2 {
		t.Fatalf("dlq %d, big %d, position %d records; want 4, 2, 2", len(dlq), len(bigs), len(positions))
	}
	if !strings.Contains(string(bigs[0].Value), `"seq":1`) || !strings.Contains(string(bigs[1].Value), `"seq":3`) {
		t.Errorf("records around the oversized one: %s / %s", bigs[0].Value, bigs[1].Value)
	}
	if !strings.Contains(string(positions[0].Value), `"seq":5`) || !strings.Contains(string(positions[1].Value), `"seq":8`) {
		t.Errorf("valid positions: %s / %s", positions[0].Value, positions[1].Value)
	}
	want := []struct{ topic, intended, errPart string }{
		{"devices/d1/big", prefix + ".big", "Message Size Too Large"},
		{"devices/d1/a/b", "", "no route matches"},
		{"devices/d1/position", prefix + ".position", "at '/lat'"},
		{"devices/d1/position", prefix + ".position", "payload is not JSON"},
	}
	for _, w := range want {
		found := false
		for _, m := range dlq {
			if header(m, "iotgw-topic") == w.topic && header(m, "iotgw-dlq-topic") == w.intended && strings.Contains(header(m, "iotgw-error"), w.errPart) {
				found = true
				if header(m, "iotgw-device") != "d1" || header(m, "iotgw-id") == "" || header(m, "iotgw-gateway") != "e2e-dlq" ||
					header(m, "trace") != "t-"+w.topic || string(m.Key) != "d1" {
					t.Errorf("dead letter for %s lacks its metadata: key %q headers %v", w.topic, m.Key, m.Headers)
				}
			}
		}
		if !found {
			var got []string
			for _, m := range dlq {
				got = append(got, fmt.Sprintf("%s -> %s: %s", header(m, "iotgw-topic"), header(m, "iotgw-dlq-topic"), header(m, "iotgw-error")))
			}
			t.Errorf("no dead letter from %s for %q with %q; got:\n  %s", w.topic, w.intended, w.errPart, strings.Join(got, "\n  "))
		}
	}

	// The topics were created with the routes' settings, not the broker's
	// auto-create defaults (3 partitions).
	n, tc := topicConfig(t, broker, prefix+".position", "min.insync.replicas", "retention.ms")
	if n != 5 || tc["min.insync.replicas"] != "1" || tc["retention.ms"] != "3600000" {
		t.Errorf("%s.position: %d partitions, configs %v; want 5, min.insync.replicas=1, retention.ms=3600000", prefix, n, tc)
	}
	if n, tc := topicConfig(t, broker, prefix+".big", "max.message.bytes"); n != 2 || tc["max.message.bytes"] != "2048" {
		t.Errorf("%s.big: %d partitions, configs %v; want 2, max.message.bytes=2048", prefix, n, tc)
	}
	out := run(t, nil, filepath.Join(repoRoot, "scripts/kafka.sh"), "topics", "--describe", "--topic", prefix+".position")
	if !strings.Contains(out, "PartitionCount: 5") || !strings.Contains(out, "min.insync.replicas=1") {
		t.Errorf("kafka-topics --describe:\n%s", out)
	}
}

// TestKafkaSinkIsolatesRejectedRecord writes [small, too large, small] for
// one key in one Write to a topic with a small max.message.bytes: Kafka
// refuses the whole partition batch, and the sink finds the record by
// resending one at a time, in order.
func TestKafkaSinkIsolatesRejectedRecord(t *testing.T) {
	broker := kafkaAddr(t)
	topic := uniqueTopicPrefix(t) + ".small"
	sink, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}}, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := sink.EnsureTopic(ctx, gateway.TopicSpec{Name: topic, Partitions: 1, Config: map[string]string{"max.message.bytes": "1024"}}); err != nil {
		t.Fatal(err)
	}
	msgs := []gateway.Message{
		{Topic: topic, Key: []byte("k"), Value: []byte("one")},
		{Topic: topic, Key: []byte("k"), Value: []byte(strings.Repeat("x", 4000))},
		{Topic: topic, Key: []byte("k"), Value: []byte("three")},
	}
	var werr error
	for i := 0; i < 50; i++ { // the first writes may meet a leader not yet elected
		werr = sink.Write(ctx, msgs)
		var we *gateway.WriteError
		if werr == nil || (errors.As(werr, &we) && len(we.Retry) == 0) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var we *gateway.WriteError
	if !errors.As(werr, &we) || len(we.Permanent) != 1 || we.Permanent[0] != 1 || len(we.Retry) != 0 || !errors.Is(we.Causes[0], kafka.MessageSizeTooLarge) {
		t.Fatalf("Write = %v (%+v), want only message 1 rejected as too large", werr, we)
	}
	got := kafkaReadAll(t, broker, topic)
	if len(got) != 2 || string(got[0].Value) != "one" || string(got[1].Value) != "three" {
		t.Fatalf("topic holds %d records, want one, three", len(got))
	}
	// Every batch completed, refused ones included: kafka-go holds none of
	// the messages, so the pipeline may reuse their memory.
	if !sink.Settled() {
		t.Error("sink not settled after its Writes returned")
	}
}

// TestKafkaCheckTopics: with creation off a missing fixed topic stops the
// start with the key and topic named; with creation on, the fixed topics
// are created with their route's settings; an unreachable Kafka is not an
// error. And at run time, a record routed to a missing topic goes to the DLQ.
func TestKafkaCheckTopics(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	off := false
	router, err := gateway.NewRouter([]gateway.Route{
		{Match: "devices/{device}/alarm", Topic: prefix + ".alarms", Partitions: 4, Config: map[string]string{"cleanup.policy": "compact"}},
		{Match: "devices/{device}/{stream}", Topic: prefix + ".{stream}"},
	})
	if err != nil {
		t.Fatal(err)
	}

	noCreate, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}, CreateTopics: &off}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer noCreate.Close()
	err = gateway.CheckTopics(ctx, noCreate, router, prefix+".dlq", nil)
	if !errors.Is(err, gateway.ErrTopicRejected) || !strings.Contains(err.Error(), "routes[0].topic") || !strings.Contains(err.Error(), prefix+".alarms") {
		t.Fatalf("CheckTopics without creation = %v, want routes[0].topic and the topic named", err)
	}

	create, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer create.Close()
	if err := gateway.CheckTopics(ctx, create, router, prefix+".dlq", nil); err != nil {
		t.Fatal(err)
	}
	if n, cfg := topicConfig(t, broker, prefix+".alarms", "cleanup.policy"); n != 4 || cfg["cleanup.policy"] != "compact" {
		t.Errorf("alarms topic: %d partitions, %v", n, cfg)
	}
	if n, _ := topicConfig(t, broker, prefix+".dlq"); n != gateway.DefaultPartitions {
		t.Errorf("dlq topic: %d partitions", n)
	}

	// Now every fixed topic exists: the check passes without creation too,
	// and only the dynamic topic that is missing is refused, for the DLQ.
	noCreate2, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}, CreateTopics: &off}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer noCreate2.Close()
	if err := gateway.CheckTopics(ctx, noCreate2, router, prefix+".dlq", nil); err != nil {
		t.Fatalf("CheckTopics with the topics present: %v", err)
	}
	err = noCreate2.EnsureTopic(ctx, gateway.TopicSpec{Name: prefix + ".engine"})
	if !errors.Is(err, gateway.ErrTopicRejected) || !strings.Contains(err.Error(), "kafka.create_topics is false") {
		t.Errorf("EnsureTopic of a missing topic without creation = %v", err)
	}
	bad, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	err = bad.EnsureTopic(ctx, gateway.TopicSpec{Name: prefix + ".rf", ReplicationFactor: 3})
	// Not a refusal for good: with a broker down the same answer comes
	// back until it returns, and records must wait rather than go to the DLQ.
	if err == nil || errors.Is(err, gateway.ErrTopicRejected) || !strings.Contains(err.Error(), "fewer brokers are alive") {
		t.Errorf("creating a topic with more replicas than brokers = %v, want a retryable error naming the cause", err)
	}

	// Unreachable Kafka: logged, not an error, and bounded.
	down, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{"127.0.0.1:1"}, DialTimeout: time.Second}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	start := time.Now()
	if err := gateway.CheckTopics(ctx, down, router, prefix+".dlq", nil); err != nil {
		t.Errorf("CheckTopics with Kafka down = %v, want nil", err)
	}
	if time.Since(start) > 15*time.Second {
		t.Errorf("CheckTopics with Kafka down took %s", time.Since(start))
	}
}

// TestKafkaMissingTopicToDLQ: with kafka.create_topics false, a record
// routed to a topic that does not exist goes to the DLQ; the others flow.
func TestKafkaMissingTopicToDLQ(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	admin := freshClient(broker)
	defer admin.Transport.(*kafka.Transport).CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: prefix + ".position", NumPartitions: 3, ReplicationFactor: 1},
		{Topic: prefix + ".dlq", NumPartitions: 1, ReplicationFactor: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(broker, t.TempDir(), prefix) + fmt.Sprintf("egress:\n  dlq: %s.dlq\n", prefix)
	cfg = strings.Replace(cfg, "kafka:\n", "kafka:\n  create_topics: false\n", 1)
	gw := startGateway(t, cfg)
	host, port, _ := net.SplitHostPort(gw.MQTT)
	run(t, strings.NewReader(`{"seq":1}`+"\n"+`{"seq":2}`+"\n"), "mosquitto_pub", "-h", host, "-p", port, "-i", "d7", "-q", "1", "-t", "devices/d7/engine", "-l")
	run(t, strings.NewReader(`{"seq":3}`+"\n"), "mosquitto_pub", "-h", host, "-p", port, "-i", "d7", "-q", "1", "-t", "devices/d7/position", "-l")
	dlq := consume(t, broker, prefix+".dlq", 2, 30*time.Second)
	pos := consume(t, broker, prefix+".position", 1, 30*time.Second)
	if len(dlq) != 2 || len(pos) != 1 {
		t.Fatalf("dlq %d, position %d; want 2, 1", len(dlq), len(pos))
	}
	for _, m := range dlq {
		if header(m, "iotgw-dlq-topic") != prefix+".engine" || !strings.Contains(header(m, "iotgw-error"), "kafka.create_topics is false") {
			t.Errorf("dead letter headers %v", m.Headers)
		}
	}
	if n, _ := topicConfig(t, broker, prefix+".position"); n != 3 {
		t.Errorf("position topic changed: %d partitions", n)
	}
	md, err := admin.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{prefix + ".engine"}})
	if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil {
		t.Errorf("the gateway created %s.engine although kafka.create_topics is false", prefix)
	}
}
