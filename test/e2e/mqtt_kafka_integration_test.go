//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func baseConfig(broker, bufferDir, prefix string) string {
	return fmt.Sprintf(`
gateway:
  id: e2e-gw
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
`, broker, bufferDir, prefix)
}

type envelope struct {
	ID         string          `json:"id"`
	Device     string          `json:"device"`
	Stream     string          `json:"stream"`
	Protocol   string          `json:"protocol"`
	Topic      string          `json:"topic"`
	ReceivedAt time.Time       `json:"received_at"`
	Payload    json.RawMessage `json:"payload"`
}

type seqPayload struct {
	Device string `json:"device"`
	Seq    int    `json:"seq"`
}

// TestMQTTToKafka: 10 devices x 100 QoS 1 messages with mosquitto_pub and
// one device with a Go MQTT 5 client land in Kafka with the device as key,
// the Java client's partition, per-device order, the envelope and headers.
func TestMQTTToKafka(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	gw := startGateway(t, baseConfig(broker, t.TempDir(), prefix))
	host, port, _ := net.SplitHostPort(gw.MQTT)

	const devicesN, perDevice = 10, 100
	var wg sync.WaitGroup
	errs := make(chan error, devicesN)
	for d := 0; d < devicesN; d++ {
		wg.Add(1)
		go func(d int) {
			defer wg.Done()
			dev := fmt.Sprintf("truck-%02d", d)
			var lines strings.Builder
			for i := 1; i <= perDevice; i++ {
				fmt.Fprintf(&lines, `{"device":%q,"seq":%d}`+"\n", dev, i)
			}
			// -l sends one message per line; with -q 1 mosquitto_pub exits
			// 0 only once every message was PUBACKed.
			out, err := execOut(strings.NewReader(lines.String()), "mosquitto_pub", "-h", host, "-p", port, "-i", dev, "-q", "1", "-t", "devices/"+dev+"/position", "-l")
			if err != nil {
				errs <- fmt.Errorf("mosquitto_pub %s: %v\n%s", dev, err, out)
			}
		}(d)
	}

	// A Go MQTT 5 client with user properties and a content type.
	goDev := "gocar-1"
	conn, err := net.Dial("tcp", gw.MQTT)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: goDev, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= perDevice; i++ {
		p := &paho.Publish{Topic: "devices/" + goDev + "/position", QoS: 1,
			Payload:    []byte(fmt.Sprintf(`{"device":%q,"seq":%d}`, goDev, i)),
			Properties: &paho.PublishProperties{ContentType: "application/json", User: paho.UserProperties{{Key: "trace", Value: fmt.Sprintf("t-%d", i)}}}}
		if _, err := c.Publish(ctx, p); err != nil {
			t.Fatalf("paho publish %d: %v", i, err)
		}
	}
	_ = c.Disconnect(&paho.Disconnect{})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	total := (devicesN + 1) * perDevice
	msgs := consume(t, broker, prefix+".position", total, 60*time.Second)
	if len(msgs) != total {
		t.Fatalf("got %d records, want exactly %d (duplicates?)", len(msgs), total)
	}

	keys := []string{goDev}
	for d := 0; d < devicesN; d++ {
		keys = append(keys, fmt.Sprintf("truck-%02d", d))
	}
	javaPart := javaPartitions(t, 3, keys)

	sort.Slice(msgs, func(i, j int) bool {
		if msgs[i].Partition != msgs[j].Partition {
			return msgs[i].Partition < msgs[j].Partition
		}
		return msgs[i].Offset < msgs[j].Offset
	})
	lastSeq := map[string]int{}
	ids := map[string]bool{}
	for _, m := range msgs {
		key := string(m.Key)
		want, ok := javaPart[key]
		if !ok {
			t.Fatalf("unexpected key %q", key)
		}
		if m.Partition != want {
			t.Errorf("key %s in partition %d, Java client puts it in %d", key, m.Partition, want)
		}
		var env envelope
		if err := json.Unmarshal(m.Value, &env); err != nil {
			t.Fatalf("value is not the JSON envelope: %v\n%s", err, m.Value)
		}
		var p seqPayload
		if err := json.Unmarshal(env.Payload, &p); err != nil {
			t.Fatalf("payload: %v\n%s", err, m.Value)
		}
		if env.Device != key || p.Device != key || env.Stream != "position" || env.Protocol != "mqtt" ||
			env.Topic != "devices/"+key+"/position" || env.ReceivedAt.IsZero() || time.Since(env.ReceivedAt) > 5*time.Minute {
			t.Errorf("bad envelope %s", m.Value)
		}
		if env.ID == "" || ids[env.ID] {
			t.Errorf("id %q empty or repeated", env.ID)
		}
		ids[env.ID] = true
		for h, v := range map[string]string{"iotgw-id": env.ID, "iotgw-device": key, "iotgw-protocol": "mqtt",
			"iotgw-topic": env.Topic, "iotgw-gateway": "e2e-gw", "iotgw-received-at": env.ReceivedAt.Format(time.RFC3339Nano)} {
			if got := header(m, h); got != v {
				t.Errorf("header %s = %q, want %q", h, got, v)
			}
		}
		if key == goDev {
			if header(m, "trace") != fmt.Sprintf("t-%d", p.Seq) || header(m, "content-type") != "application/json" {
				t.Errorf("MQTT 5 properties not in headers: %v", m.Headers)
			}
		}
		if p.Seq != lastSeq[key]+1 {
			t.Errorf("device %s: seq %d after %d (order broken)", key, p.Seq, lastSeq[key])
		}
		lastSeq[key] = p.Seq
	}
	for _, k := range keys {
		if lastSeq[k] != perDevice {
			t.Errorf("device %s: last seq %d, want %d", k, lastSeq[k], perDevice)
		}
	}

	// /metrics saw every record delivered, and each within the run. The
	// histograms are updated just after Kafka's ack: allow a moment.
	var metrics string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		metrics = httpGet(t, "http://"+gw.HTTP+"/metrics")
		if strings.Contains(metrics, fmt.Sprintf("iotgw_egress_delivery_seconds_count %d\n", total)) || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{
		fmt.Sprintf("iotgw_egress_delivery_seconds_count %d\n", total),
		fmt.Sprintf("iotgw_egress_delivery_seconds_bucket{le=\"300\"} %d\n", total),
		fmt.Sprintf("iotgw_kafka_delivered_total %d\n", total),
		`iotgw_kafka_write_seconds_count{outcome="ok"} `,
		"iotgw_kafka_write_messages_sum ",
		"iotgw_buffer_fsync_seconds_count ",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every record was acked after an fsync, so at least one was timed.
	if strings.Contains(metrics, "iotgw_buffer_fsync_seconds_count 0\n") {
		t.Errorf("/metrics timed no fsync: iotgw_buffer_fsync_seconds_count 0")
	}

	// And a third-party consumer sees the same keys and partitions.
	out := run(t, nil, "kcat", "-b", broker, "-C", "-t", prefix+".position", "-e", "-o", "beginning", "-q", "-f", "%k %p\n")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != total {
		t.Fatalf("kcat read %d records, want %d", len(lines), total)
	}
	for _, l := range lines {
		var k string
		var p int
		fmt.Sscanf(l, "%s %d", &k, &p)
		if javaPart[k] != p {
			t.Fatalf("kcat: %s in partition %d, want %d", k, p, javaPart[k])
		}
	}
}

// TestAckedWhileKafkaDownSurvivesSIGKILL: messages PUBACKed while Kafka is
// unreachable are on disk; after SIGKILL and a restart with Kafka back they
// are delivered, in order, exactly once.
func TestAckedWhileKafkaDownSurvivesSIGKILL(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	// Nothing listens on the proxy port yet: to the gateway Kafka is down.
	proxyPort := freePort(t)
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", proxyPort)
	gw := startGateway(t, baseConfig(proxyAddr, t.TempDir(), prefix), "IOTGW_EGRESS_RETRY_MAX=200ms")
	host, port, _ := net.SplitHostPort(gw.MQTT)

	var lines strings.Builder
	for i := 1; i <= 20; i++ {
		fmt.Fprintf(&lines, `{"device":"truck-9","seq":%d}`+"\n", i)
	}
	run(t, strings.NewReader(lines.String()), "mosquitto_pub", "-h", host, "-p", port, "-i", "truck-9", "-q", "1", "-t", "devices/truck-9/engine", "-l")
	gw.Kill()

	stop := startProxy(t, proxyAddr, broker)
	defer stop()
	gw.Restart()
	msgs := consume(t, broker, prefix+".engine", 20, 60*time.Second)
	if len(msgs) != 20 {
		t.Fatalf("got %d records after restart, want 20\n%s", len(msgs), gw.Logs())
	}
	sort.Slice(msgs, func(i, j int) bool { return msgs[i].Offset < msgs[j].Offset })
	for i, m := range msgs {
		var env envelope
		var p seqPayload
		if err := json.Unmarshal(m.Value, &env); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(env.Payload, &p); err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != "truck-9" || p.Seq != i+1 {
			t.Errorf("record %d: key %s seq %d", i, m.Key, p.Seq)
		}
	}
}

// startProxy forwards TCP from listen to target until stopped.
func startProxy(t *testing.T, listen, target string) func() {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	return func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

func execOut(stdin io.Reader, name string, args ...string) (string, error) {
	cmd := newCmd(name, args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	return string(out), err
}
