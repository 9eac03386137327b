//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/gateway"
)

// devicesHere is a CommandTarget standing in for a gateway's MQTT server:
// it delivers to the devices connected to it and records what it got.
type devicesHere struct {
	mu        sync.Mutex
	connected map[string]bool
	got       []string // device:payload in delivery order
}

func newDevicesHere(devs ...string) *devicesHere {
	d := &devicesHere{connected: map[string]bool{}}
	for _, dev := range devs {
		d.connected[dev] = true
	}
	return d
}

func (d *devicesHere) Deliver(_ context.Context, cmd gateway.Command) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.connected[cmd.Device] {
		return gateway.ErrNotConnected
	}
	d.got = append(d.got, cmd.Device+":"+string(cmd.Payload))
	return nil
}

func (d *devicesHere) connect(dev string) {
	d.mu.Lock()
	d.connected[dev] = true
	d.mu.Unlock()
}

func (d *devicesHere) delivered() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.got...)
}

// runningDownlink is a Downlink running in the background.
type runningDownlink struct {
	dl   *gateway.Downlink
	stop func()
}

func startDownlink(t *testing.T, opts gateway.DownlinkOptions, broker, id string, target gateway.CommandTarget) *runningDownlink {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dl, err := gateway.NewDownlink(opts, gateway.KafkaOptions{Brokers: []string{broker}}, []gateway.CommandTarget{target}, id, logger.With("gateway", id))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dl.Run(ctx) }()
	var once sync.Once
	r := &runningDownlink{dl: dl}
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("downlink %s: %v", id, err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("downlink %s did not stop within 15s", id)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// TestDownlinkTwoGateways runs two downlinks (gateways gw-a and gw-b) on one
// command topic. Each delivers only to the devices connected to it, in
// order; a device that connects late gets its commands; a command whose
// device never connects expires; one status record per outcome lands in
// the status topic. A restarted gateway does not deliver again what it
// delivered before.
func TestDownlinkTwoGateways(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	opts := gateway.DownlinkOptions{Topic: prefix + ".commands", StatusTopic: prefix + ".status", TTL: time.Minute, RetryInterval: 100 * time.Millisecond}

	a := newDevicesHere("d1")
	b := newDevicesHere("d2")
	dlA := startDownlink(t, opts, broker, "gw-a", a)
	dlB := startDownlink(t, opts, broker, "gw-b", b)

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: opts.Topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	send := func(dev, payload string, headers ...kafka.Header) {
		t.Helper()
		headers = append(headers, kafka.Header{Key: gateway.HeaderCommandID, Value: []byte(payload)})
		var err error
		for i := 0; i < 50; i++ { // the downlinks create the topic
			if err = w.WriteMessages(ctx, kafka.Message{Key: []byte(dev), Value: []byte(payload), Headers: headers}); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("produce command: %v", err)
	}
	send("d1", "c1")
	send("d2", "c2")
	send("d1", "c3")
	send("d3", "c4") // d3 connects to gw-b later
	send("d3", "c5")
	send("d4", "c6", kafka.Header{Key: gateway.HeaderCommandTTL, Value: []byte("2s")}) // never connects

	kwaitFor(t, 30*time.Second, "d1 and d2 commands", func() bool { return len(a.delivered()) == 2 && len(b.delivered()) == 1 })
	b.connect("d3")
	kwaitFor(t, 30*time.Second, "d3 commands after it connected", func() bool { return len(b.delivered()) == 3 })

	statuses := func() map[string][]gateway.CommandStatus {
		out := map[string][]gateway.CommandStatus{}
		for _, m := range kafkaReadAll(t, broker, opts.StatusTopic) {
			var st gateway.CommandStatus
			if err := json.Unmarshal(m.Value, &st); err != nil {
				t.Fatalf("status record %s: %v", m.Value, err)
			}
			if string(m.Key) != st.Device || header(m, gateway.HeaderCommandID) != st.CommandID {
				t.Errorf("status record key %q / header %q do not match %+v", m.Key, header(m, gateway.HeaderCommandID), st)
			}
			out[st.CommandID] = append(out[st.CommandID], st)
		}
		return out
	}
	var sts map[string][]gateway.CommandStatus
	kwaitFor(t, 30*time.Second, "a status for every command", func() bool {
		sts = statuses()
		return len(sts) == 6
	})
	for id, want := range map[string]string{"c1": "gw-a", "c3": "gw-a", "c2": "gw-b", "c4": "gw-b", "c5": "gw-b"} {
		if s := sts[id]; len(s) != 1 || s[0].Status != gateway.CommandDelivered || s[0].Gateway != want {
			t.Errorf("%s: statuses %+v, want one delivered by %s", id, s, want)
		}
	}
	expired := sts["c6"]
	if len(expired) == 0 || expired[0].Status != gateway.CommandExpired || expired[0].Device != "d4" {
		t.Errorf("c6: statuses %+v, want expired", expired)
	}
	t.Logf("c6 expired reported by %d gateway(s): %+v", len(expired), expired)
	if got := strings.Join(a.delivered(), " "); got != "d1:c1 d1:c3" {
		t.Errorf("gw-a delivered %s", got)
	}
	if got := strings.Join(b.delivered(), " "); got != "d2:c2 d3:c4 d3:c5" {
		t.Errorf("gw-b delivered %s", got)
	}
	// gw-a dropped its copies of what gw-b delivered.
	kwaitFor(t, 10*time.Second, "gw-a's queue to empty", func() bool { return dlA.dl.Stats().Queued == 0 })
	if st := dlA.dl.Stats(); st.Delivered != 2 || st.Settled < 3 {
		t.Errorf("gw-a stats %+v, want 2 delivered and d2/d3 commands settled by gw-b", st)
	}

	// Restart gw-a: what it delivered is not delivered again; new commands are.
	dlA.stop()
	// Its group's committed offsets passed every command: all six ended.
	client := freshClient(broker)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	offs, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "iotgw-gw-a", Topics: map[string][]int{opts.Topic: {0, 1, 2}}})
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	for _, p := range offs.Topics[opts.Topic] {
		committed += max(p.CommittedOffset, 0)
	}
	if committed != 6 {
		t.Errorf("gw-a committed %d commands, want 6: %+v", committed, offs.Topics)
	}
	a2 := newDevicesHere("d1")
	dlA2 := startDownlink(t, opts, broker, "gw-a", a2)
	send("d1", "c7")
	kwaitFor(t, 30*time.Second, "c7 after the restart", func() bool { return len(a2.delivered()) >= 1 })
	time.Sleep(time.Second) // room for a wrong redelivery to show
	if got := strings.Join(a2.delivered(), " "); got != "d1:c7" {
		t.Errorf("gw-a after restart delivered %s, want only d1:c7", got)
	}
	dlA2.stop()
	dlB.stop()

	var ids []string
	for id, s := range statuses() {
		for _, st := range s {
			if st.Status == gateway.CommandDelivered {
				ids = append(ids, fmt.Sprintf("%s@%s", id, st.Gateway))
			}
		}
	}
	sort.Strings(ids)
	if strings.Join(ids, " ") != "c1@gw-a c2@gw-b c3@gw-a c4@gw-b c5@gw-b c7@gw-a" {
		t.Errorf("delivered statuses %v", ids)
	}
}
