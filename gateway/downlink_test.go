package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// fakeTarget is a CommandTarget with a settable set of connected devices.
type fakeTarget struct {
	mu        sync.Mutex
	connected map[string]bool
	fail      map[string]int // device -> attempts left to fail
	got       []Command
}

var _ CommandTarget = (*fakeTarget)(nil)

func newFakeTarget(devices ...string) *fakeTarget {
	t := &fakeTarget{connected: map[string]bool{}, fail: map[string]int{}}
	for _, d := range devices {
		t.connected[d] = true
	}
	return t
}

func (t *fakeTarget) Deliver(ctx context.Context, cmd Command) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.connected[cmd.Device] {
		return ErrNotConnected
	}
	if t.fail[cmd.Device] > 0 {
		t.fail[cmd.Device]--
		return errors.New("no PUBACK within deliver_timeout")
	}
	t.got = append(t.got, cmd)
	return nil
}

func (t *fakeTarget) connect(dev string) {
	t.mu.Lock()
	t.connected[dev] = true
	t.mu.Unlock()
}

func (t *fakeTarget) delivered() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, c := range t.got {
		out = append(out, c.Device+":"+string(c.Payload))
	}
	return out
}

// testDownlink runs the queue and dispatcher of a Downlink without Kafka;
// statuses arrive on the returned channel instead of the status topic.
func testDownlink(t *testing.T, opts DownlinkOptions, targets ...CommandTarget) (*Downlink, <-chan statusItem, context.Context) {
	t.Helper()
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 10 * time.Millisecond
	}
	d, err := NewDownlink(opts, KafkaOptions{Brokers: []string{"127.0.0.1:1"}}, targets, "gw-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	d.parts[0] = &partitionState{done: map[int64]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.dispatch(ctx) }()
	t.Cleanup(func() { cancel(); <-done; d.sink.Close() })
	return d, d.statusCh, ctx
}

func addCommand(t *testing.T, d *Downlink, ctx context.Context, off int64, dev, payload string, headers ...kafka.Header) {
	t.Helper()
	rec := &kafka.Record{Offset: off, Time: time.Now(), Headers: headers}
	pc := &pendingCmd{cmd: d.command(rec, 0, []byte(dev), []byte(payload)), partition: 0, offset: off}
	if !d.enqueue(ctx, pc) {
		t.Fatal("enqueue refused")
	}
}

func waitStatus(t *testing.T, ch <-chan statusItem) statusItem {
	t.Helper()
	select {
	case it := <-ch:
		return it
	case <-time.After(5 * time.Second):
		t.Fatal("no status within 5s")
		return statusItem{}
	}
}

func TestDownlinkDeliversInOrderAndWaitsForOfflineDevices(t *testing.T) {
	target := newFakeTarget("d1")
	d, statuses, ctx := testDownlink(t, DownlinkOptions{TTL: time.Minute}, target)
	addCommand(t, d, ctx, 0, "d1", "a")
	addCommand(t, d, ctx, 1, "d2", "x") // offline for now
	addCommand(t, d, ctx, 2, "d1", "b")
	addCommand(t, d, ctx, 3, "d2", "y")
	for i := 0; i < 2; i++ {
		it := waitStatus(t, statuses)
		if it.status.Status != CommandDelivered || it.status.Device != "d1" || it.status.Gateway != "gw-a" {
			t.Fatalf("status %+v", it.status)
		}
	}
	if st := d.Stats(); st.Queued != 2 || st.Delivered != 2 {
		t.Fatalf("stats %+v, want 2 queued for d2", st)
	}
	target.connect("d2")
	for i := 0; i < 2; i++ {
		if it := waitStatus(t, statuses); it.status.Device != "d2" || it.status.Status != CommandDelivered {
			t.Fatalf("status %+v", it.status)
		}
	}
	if got := strings.Join(target.delivered(), " "); got != "d1:a d1:b d2:x d2:y" {
		t.Errorf("delivered %s", got)
	}
	// Statuses written: the watermark passes every command.
	for off := int64(0); off < 4; off++ {
		d.markDone(0, off)
	}
	if w := d.parts[0].watermark(); w != 4 {
		t.Errorf("watermark %d, want 4", w)
	}
}

func TestDownlinkExpiryRetriesAndQueueLimit(t *testing.T) {
	target := newFakeTarget("flaky")
	target.fail["flaky"] = 5
	d, statuses, ctx := testDownlink(t, DownlinkOptions{TTL: time.Minute, MaxQueued: 2, MaxAttempts: 2}, target)

	// Fails twice: failed after max_attempts, with the error.
	addCommand(t, d, ctx, 0, "flaky", "c1")
	it := waitStatus(t, statuses)
	if it.status.Status != CommandFailed || it.status.Attempts != 2 || !strings.Contains(it.status.Error, "PUBACK") {
		t.Fatalf("status %+v, want failed after 2 attempts", it.status)
	}

	// An expiry header: expired (after the stagger) without delivery.
	addCommand(t, d, ctx, 1, "gone", "c2", kafka.Header{Key: HeaderCommandTTL, Value: []byte("1ms")})
	it = waitStatus(t, statuses)
	if it.status.Status != CommandExpired || it.status.Device != "gone" || it.offset != 1 {
		t.Fatalf("status %+v, want expired", it.status)
	}

	// Full queue: the oldest waiting command fails to make room.
	addCommand(t, d, ctx, 2, "off1", "c3", kafka.Header{Key: HeaderCommandID, Value: []byte("cmd-3")})
	addCommand(t, d, ctx, 3, "off2", "c4")
	addCommand(t, d, ctx, 4, "off3", "c5")
	it = waitStatus(t, statuses)
	if it.status.Status != CommandFailed || it.status.CommandID != "cmd-3" || !strings.Contains(it.status.Error, "max_queued") {
		t.Fatalf("status %+v, want cmd-3 failed for a full queue", it.status)
	}
	if st := d.Stats(); st.Queued != 2 {
		t.Errorf("queued %d, want 2", st.Queued)
	}

	// No key: failed at once.
	addCommand(t, d, ctx, 5, "", "c6")
	if it = waitStatus(t, statuses); it.status.Status != CommandFailed || !strings.Contains(it.status.Error, "no key") {
		t.Fatalf("status %+v, want failed for no device", it.status)
	}
}

// A status from another gateway settles a waiting command here without a
// status of our own; a command already settled is not queued at all.
func TestDownlinkSettledElsewhere(t *testing.T) {
	target := newFakeTarget()
	d, statuses, ctx := testDownlink(t, DownlinkOptions{TTL: time.Minute}, target)
	addCommand(t, d, ctx, 0, "d9", "x", kafka.Header{Key: HeaderCommandID, Value: []byte("c-1")})
	d.settle(CommandStatus{CommandID: "c-1", Device: "d9", Status: CommandDelivered, Gateway: "gw-b"})
	d.settle(CommandStatus{CommandID: "c-2", Device: "d9", Status: CommandDelivered, Gateway: "gw-b"})
	addCommand(t, d, ctx, 1, "d9", "y", kafka.Header{Key: HeaderCommandID, Value: []byte("c-2")})
	if st := d.Stats(); st.Queued != 0 || st.Settled != 2 {
		t.Fatalf("stats %+v, want both settled", st)
	}
	if w := d.parts[0].watermark(); w != 2 {
		t.Errorf("watermark %d, want 2", w)
	}
	target.connect("d9")
	select {
	case it := <-statuses:
		t.Fatalf("unexpected status %+v", it.status)
	case <-time.After(100 * time.Millisecond):
	}
	if len(target.delivered()) != 0 {
		t.Errorf("delivered a settled command: %v", target.delivered())
	}
}

func TestDownlinkCommandHeaders(t *testing.T) {
	d, err := NewDownlink(DownlinkOptions{TTL: time.Hour}, KafkaOptions{Brokers: []string{"127.0.0.1:1"}}, nil, "gw", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.sink.Close()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cmd := d.command(&kafka.Record{Offset: 42, Time: at}, 1, []byte("t7"), []byte("reboot"))
	if cmd.ID != "iot.commands/1/42" || cmd.Device != "t7" || !cmd.Expires.Equal(at.Add(time.Hour)) {
		t.Errorf("default command %+v", cmd)
	}
	cmd = d.command(&kafka.Record{Offset: 1, Time: at, Headers: []kafka.Header{
		{Key: HeaderCommandID, Value: []byte("abc")}, {Key: HeaderCommandExpires, Value: []byte("2026-01-02T03:05:00Z")}, {Key: "x", Value: []byte("y")},
	}}, 0, []byte("t7"), nil)
	if cmd.ID != "abc" || !cmd.Expires.Equal(at.Add(55*time.Second)) || len(cmd.Headers) != 3 {
		t.Errorf("command with headers %+v", cmd)
	}
}

func TestDownlinkOptionsValidate(t *testing.T) {
	for key, o := range map[string]DownlinkOptions{
		"downlink.topic":        {Enabled: true, Topic: "bad topic"},
		"downlink.status_topic": {Enabled: true, Topic: "a", StatusTopic: "a"},
		"downlink.ttl":          {Enabled: true, TTL: -time.Second},
		"downlink.max_queued":   {Enabled: true, MaxQueued: -1},
		"downlink.workers":      {Enabled: true, Workers: 5000},
	} {
		o.SetDefaults("gw")
		if err := o.Validate(); err == nil || !strings.HasPrefix(err.Error(), key) {
			t.Errorf("%s: %v", key, err)
		}
	}
	o := DownlinkOptions{}
	o.SetDefaults("gw-1")
	if o.Group != "iotgw-gw-1" || o.Topic != "iot.commands" || o.StatusTopic != "iot.command-status" {
		t.Errorf("defaults %+v", o)
	}
}

func TestIDSetForgetsOldest(t *testing.T) {
	s := newIDSet(3)
	for i := 0; i < 5; i++ {
		s.add(fmt.Sprint(i))
	}
	for i, want := range []bool{false, false, true, true, true} {
		if s.has(fmt.Sprint(i)) != want {
			t.Errorf("has(%d) = %v", i, !want)
		}
	}
}

func FuzzDownlinkCommand(f *testing.F) {
	d, err := NewDownlink(DownlinkOptions{}, KafkaOptions{Brokers: []string{"127.0.0.1:1"}}, nil, "gw", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("t1"), []byte("{}"), "iotgw-command-ttl", "30s")
	f.Add([]byte(""), []byte(nil), "iotgw-command-expires", "not a time")
	f.Add([]byte("\xff"), []byte("x"), "iotgw-command-id", "")
	f.Fuzz(func(t *testing.T, key, val []byte, hk, hv string) {
		cmd := d.command(&kafka.Record{Offset: 3, Headers: []kafka.Header{{Key: hk, Value: []byte(hv)}}}, 0, key, val)
		if cmd.Expires.IsZero() || cmd.Device != string(key) {
			t.Fatalf("command %+v", cmd)
		}
		if cmd.ID == "" {
			t.Fatalf("empty id")
		}
	})
}
