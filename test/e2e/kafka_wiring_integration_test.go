//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/gateway"
)

// TestKafkaStartRefusesMissingTopic: with kafka.create_topics false and a
// route's fixed topic missing, `iotgw run` exits non-zero naming the key
// and the topic.
func TestKafkaStartRefusesMissingTopic(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "iotgw.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
kafka:
  brokers: [%s]
  create_topics: false
buffer:
  dir: %s
auth:
  mode: open
http:
  listen: "off"
mqtt:
  tcp: 127.0.0.1:0
coap:
  udp: "off"
routes:
  - match: devices/{device}/alarm
    topic: %s.alarms
`, broker, filepath.Join(dir, "buffer"), prefix)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binPath, "run", "--config", cfg).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("iotgw run did not refuse to start (err %v):\n%s", err, out)
	}
	if !strings.Contains(string(out), "routes[0].topic") || !strings.Contains(string(out), prefix+".alarms") {
		t.Fatalf("the message does not name the key and the topic:\n%s", out)
	}
}

// TestDownlinkMQTT: commands from Kafka reach an MQTT 5 device subscribed
// to devices/{device}/commands/# through the binary, in order, with the
// command id as user property; a device that connects later gets its
// commands then; each ends with a delivered status record.
func TestDownlinkMQTT(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	cfg := baseConfig(broker, t.TempDir(), prefix) + fmt.Sprintf(`
downlink:
  enabled: true
  topic: %s.commands
  status_topic: %s.status
  retry_interval: 200ms
`, prefix, prefix)
	gw := startGateway(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	subscribe := func(dev string, got chan<- *paho.Publish) *paho.Client {
		t.Helper()
		conn, err := net.Dial("tcp", gw.MQTT)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) { got <- pr.Packet; return true, nil },
		}})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: dev, CleanStart: true, KeepAlive: 30}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/" + dev + "/commands/#", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	got1 := make(chan *paho.Publish, 10)
	c1 := subscribe("m1", got1)
	defer c1.Disconnect(&paho.Disconnect{})

	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: prefix + ".commands", Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	send := func(dev, id string) {
		t.Helper()
		var err error
		for i := 0; i < 50; i++ {
			if err = w.WriteMessages(ctx, kafka.Message{Key: []byte(dev), Value: []byte("payload-" + id),
				Headers: []kafka.Header{{Key: gateway.HeaderCommandID, Value: []byte(id)}}}); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("produce command: %v", err)
	}
	send("m1", "k1")
	send("m2", "k2") // offline
	send("m1", "k3")
	for _, id := range []string{"k1", "k3"} {
		select {
		case p := <-got1:
			if string(p.Payload) != "payload-"+id || p.Properties.User.Get("iotgw-command-id") != id {
				t.Fatalf("m1 got %q (%v), want %s", p.Payload, p.Properties.User, id)
			}
		case <-ctx.Done():
			t.Fatalf("m1 never got command %s\n%s", id, ktail(gw.Logs(), 30))
		}
	}
	got2 := make(chan *paho.Publish, 10)
	c2 := subscribe("m2", got2)
	defer c2.Disconnect(&paho.Disconnect{})
	select {
	case p := <-got2:
		if string(p.Payload) != "payload-k2" {
			t.Fatalf("m2 got %q", p.Payload)
		}
	case <-ctx.Done():
		t.Fatalf("m2 never got its command after connecting\n%s", ktail(gw.Logs(), 30))
	}
	statuses := consume(t, broker, prefix+".status", 3, 30*time.Second)
	for _, m := range statuses {
		var st gateway.CommandStatus
		if err := json.Unmarshal(m.Value, &st); err != nil || st.Status != gateway.CommandDelivered || st.Gateway != "e2e-gw" {
			t.Errorf("status %s (%v)", m.Value, err)
		}
	}
}
