package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// startBroker runs an embedded mochi broker on a free loopback port with
// open auth and the given extra hooks; it is closed when the test ends.
func startBroker(t testing.TB, inline bool, hooks ...mqtt.Hook) (*mqtt.Server, string) {
	t.Helper()
	s := mqtt.New(&mqtt.Options{InlineClient: inline, Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("test", l)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, l.Addr().String()
}

// recorder is an inline subscriber to devices/# that keeps, per device, the
// seqs in the order the broker delivered them.
type recorder struct {
	mu     sync.Mutex
	seqs   map[string][]uint64
	unique map[string]*SeqSet
	total  int // deliveries, repeats included
	bad    []string
}

func subscribe(t testing.TB, s *mqtt.Server) *recorder {
	t.Helper()
	r := &recorder{seqs: map[string][]uint64{}, unique: map[string]*SeqSet{}}
	err := s.Subscribe("devices/#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var p struct {
			Device string `json:"device"`
			Seq    uint64 `json:"seq"`
			TS     string `json:"ts"`
			Run    string `json:"run"`
		}
		err := json.Unmarshal(pk.Payload, &p)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.total++
		if _, terr := time.Parse(time.RFC3339Nano, p.TS); err != nil || terr != nil || p.Seq == 0 || p.Run == "" ||
			!strings.HasPrefix(pk.TopicName, "devices/"+p.Device+"/") {
			r.bad = append(r.bad, fmt.Sprintf("%s: %s", pk.TopicName, pk.Payload))
			return
		}
		r.seqs[p.Device] = append(r.seqs[p.Device], p.Seq)
		if r.unique[p.Device] == nil {
			r.unique[p.Device] = &SeqSet{}
		}
		r.unique[p.Device].Add(p.Seq)
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// distinct is the number of different device+seq delivered.
func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.unique {
		n += int(s.Len())
	}
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkDelivered checks that the subscriber saw every seq 1..n of each
// device, with new seqs in increasing order (repeats from resends aside).
func (r *recorder) checkDelivered(t testing.TB, devices []string, n uint64) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		t.Fatalf("%d bad payloads, first: %s", len(r.bad), r.bad[0])
	}
	for _, id := range devices {
		var seen SeqSet
		var top uint64
		for _, s := range r.seqs[id] {
			if !seen.Add(s) {
				continue
			}
			if s < top {
				t.Fatalf("%s: seq %d delivered after %d", id, s, top)
			}
			top = s
		}
		if seen.Len() != n || seen.Max() != n {
			t.Fatalf("%s: broker delivered seqs %s, want 1-%d", id, seen.String(), n)
		}
	}
}

func truckIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = deviceID(KindTruck, i+1)
	}
	return ids
}

func TestRunMQTT(t *testing.T) {
	const trucks, msgs = 4, 150
	for _, proto := range []string{"3.1.1", "5"} {
		for _, qos := range []int{0, 1, 2} {
			t.Run(fmt.Sprintf("v%s/qos%d", proto, qos), func(t *testing.T) {
				s, addr := startBroker(t, true)
				rec := subscribe(t, s)
				var progress bytes.Buffer
				rep, err := Run(context.Background(), Options{
					Broker: addr, Trucks: trucks, Messages: msgs, QoS: QoS(qos), Protocol: proto,
					InFlight: 20, Seed: 5, RampUp: 20 * time.Millisecond, Progress: &progress,
				})
				if err != nil {
					t.Fatal(err)
				}
				waitFor(t, "broker to deliver", 5*time.Second, func() bool { return rec.distinct() >= trucks*msgs })
				rec.checkDelivered(t, truckIDs(trucks), msgs)
				wantAcked := int64(trucks * msgs)
				if qos == 0 {
					wantAcked = 0
				}
				if rep.Sent != trucks*msgs || rep.Acked != wantAcked || rep.Refused != 0 || rep.Errors != 0 ||
					rep.Retries != 0 || rep.Unacked != 0 || rep.Connects != trucks {
					t.Fatalf("report: %+v", rep)
				}
				for _, id := range truckIDs(trucks) {
					d := rep.Devices[id]
					if d.Sent != msgs {
						t.Errorf("%s sent %d", id, d.Sent)
					}
					if qos > 0 && (d.LastAcked != msgs || d.Acked.String() != fmt.Sprintf("1-%d", msgs)) {
						t.Errorf("%s acked %s, last %d", id, d.Acked.String(), d.LastAcked)
					}
				}
				if qos > 0 && (rep.LatencyP50 <= 0 || rep.LatencyP999 < rep.LatencyP50 || rep.Throughput <= 0) {
					t.Errorf("latency p50 %s p999 %s throughput %f", rep.LatencyP50, rep.LatencyP999, rep.Throughput)
				}
				var out bytes.Buffer
				rep.Print(&out)
				if !strings.Contains(out.String(), fmt.Sprintf("sent %d", trucks*msgs)) || !strings.Contains(out.String(), "truck-0004") {
					t.Errorf("Print:\n%s", out.String())
				}
			})
		}
	}
}

// slowHook makes the broker take a while per publish, so the simulator's
// in-flight window is full whenever a connection is cut.
type slowHook struct {
	mqtt.HookBase
	delay time.Duration
}

func (h *slowHook) ID() string { return "slow" }

func (h *slowHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *slowHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	time.Sleep(h.delay)
	return pk, nil
}

// kick closes every device connection the broker has.
func kick(s *mqtt.Server) int {
	n := 0
	for id, cl := range s.Clients.GetAll() {
		if id != mqtt.InlineClientId && !cl.Closed() {
			cl.Stop(errors.New("test: connection cut"))
			n++
		}
	}
	return n
}

func TestRunReconnectResends(t *testing.T) {
	for _, tt := range []struct {
		proto      string
		qos        int
		persistent bool
	}{
		{"3.1.1", 1, false},
		{"5", 1, true},
		{"5", 2, false},
	} {
		t.Run(fmt.Sprintf("v%s/qos%d/persistent=%v", tt.proto, tt.qos, tt.persistent), func(t *testing.T) {
			const trucks, msgs = 3, 1500
			s, addr := startBroker(t, true, &slowHook{delay: 50 * time.Microsecond})
			rec := subscribe(t, s)
			var kicked atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				for _, at := range []int{trucks * msgs / 4, trucks * msgs / 2} {
					for rec.count() < at {
						if ctx.Err() != nil {
							return
						}
						time.Sleep(time.Millisecond)
					}
					kicked.Add(int64(kick(s)))
				}
			}()
			rep, err := Run(ctx, Options{
				Broker: addr, Trucks: trucks, Messages: msgs, QoS: QoS(tt.qos), Protocol: tt.proto,
				PersistentSession: tt.persistent, InFlight: 50, Seed: 9,
				ReconnectMin: 5 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			cancel()
			if kicked.Load() < trucks {
				t.Fatalf("only %d connections cut; the run finished too early", kicked.Load())
			}
			if tt.persistent {
				// A bare mochi broker stores its PUBACK in the session before
				// writing it; when the connection is cut in between, it replays
				// that PUBACK on session resume without ever fanning the message
				// out. The simulator is right to count it acked, so only the
				// acks are checked here (this is the loss iotgw's durable path
				// exists to prevent).
				waitFor(t, "broker to deliver", 20*time.Second, func() bool { return rec.distinct() >= trucks*msgs*9/10 })
			} else {
				waitFor(t, "broker to deliver", 20*time.Second, func() bool { return rec.distinct() >= trucks*msgs })
				rec.checkDelivered(t, truckIDs(trucks), msgs)
			}
			if rep.Sent != trucks*msgs || rep.Acked != trucks*msgs || rep.Unacked != 0 {
				t.Fatalf("sent %d acked %d unacked %d, want %d each and 0 unacked", rep.Sent, rep.Acked, rep.Unacked, trucks*msgs)
			}
			if rep.Retries == 0 || rep.Errors < kicked.Load() || rep.Connects < trucks+kicked.Load() {
				t.Fatalf("retries %d errors %d connects %d after %d cuts", rep.Retries, rep.Errors, rep.Connects, kicked.Load())
			}
			for _, id := range truckIDs(trucks) {
				if got := rep.Devices[id].Acked.String(); got != fmt.Sprintf("1-%d", msgs) {
					t.Errorf("%s acked %s", id, got)
				}
			}
			t.Logf("cuts %d, retries %d, errors %d, connects %d", kicked.Load(), rep.Retries, rep.Errors, rep.Connects)
		})
	}
}

// quotaHook refuses every tenth message with MQTT 5 reason 0x97.
type quotaHook struct{ mqtt.HookBase }

func (h *quotaHook) ID() string { return "quota" }

func (h *quotaHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *quotaHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	var p struct{ Seq uint64 }
	if json.Unmarshal(pk.Payload, &p) == nil && p.Seq%10 == 0 {
		return pk, packets.ErrQuotaExceeded
	}
	return pk, nil
}

func TestRunRefused(t *testing.T) {
	_, addr := startBroker(t, false, &quotaHook{})
	rep, err := Run(context.Background(), Options{
		Broker: addr, Trucks: 2, Messages: 100, Protocol: "5", ReconnectMin: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 200 || rep.Acked != 180 || rep.Refused != 20 || rep.Errors != 0 {
		t.Fatalf("sent %d acked %d refused %d errors %d", rep.Sent, rep.Acked, rep.Refused, rep.Errors)
	}
	d := rep.Devices["truck-0001"]
	if d.Acked.Contains(10) || !d.Acked.Contains(11) || d.Acked.Len() != 90 || d.LastAcked != 99 {
		t.Fatalf("acked %s", d.Acked.String())
	}
}

// denyHook refuses every connection.
type denyHook struct{ mqtt.HookBase }

func (h *denyHook) ID() string { return "deny" }

func (h *denyHook) Provides(b byte) bool { return b == mqtt.OnConnectAuthenticate }

func (h *denyHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return false }

func TestRunConnectRefusedAndDuration(t *testing.T) {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(&denyHook{}, nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("deny", l)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	rep, err := Run(context.Background(), Options{
		Broker: l.Addr().String(), Trucks: 2, Duration: 300 * time.Millisecond, Rate: 10,
		Password: "secret", ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("run with duration 300ms took %s", took)
	}
	if rep.Sent != 0 || rep.Connects != 0 || rep.Errors < 4 {
		t.Fatalf("sent %d connects %d errors %d", rep.Sent, rep.Connects, rep.Errors)
	}
}

// TestRunPacedAndCancelled runs a realistic fleet at 20 msg/s per truck
// until the context is cancelled.
func TestRunPacedAndCancelled(t *testing.T) {
	s, addr := startBroker(t, true)
	rec := subscribe(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	var progress syncBuffer
	rep, err := Run(ctx, Options{
		Broker: addr, Trucks: 5, Rate: 20, Jitter: 0.1, Seed: 1, Progress: &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	// About 12 messages per truck in 0.6 s; the first is sent at once.
	if rep.Sent < 5*9 || rep.Sent > 5*15 || rep.Acked != rep.Sent || rep.Errors != 0 {
		t.Fatalf("sent %d acked %d errors %d", rep.Sent, rep.Acked, rep.Errors)
	}
	waitFor(t, "delivery", 2*time.Second, func() bool { return int64(rec.distinct()) >= rep.Sent })
	if o := (Options{Rate: 20}).WithDefaults(); o.InFlight != 10 {
		t.Fatalf("in_flight default %d", o.InFlight)
	}
	if !strings.Contains(progress.String(), fmt.Sprintf("sent %d  acked %d", rep.Sent, rep.Acked)) {
		t.Errorf("progress: %q", progress.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the progress goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPublishWireBytes checks every PUBLISH byte a truck writes against
// the payload its generator makes for the same seed, with the ts the
// message carries: the send path adds the header and the packet framing
// and nothing else.
func TestPublishWireBytes(t *testing.T) {
	const msgs = 3000
	for _, tt := range []struct {
		proto string
		qos   int
	}{{"5", 1}, {"3.1.1", 1}, {"5", 0}} {
		t.Run(fmt.Sprintf("v%s/qos%d", tt.proto, tt.qos), func(t *testing.T) {
			var mu sync.Mutex
			var got [][]byte
			addr := startAckBroker(t, func(h byte, body []byte) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, append([]byte{h}, body...))
			})
			rep, err := Run(context.Background(), Options{
				Broker: addr, Trucks: 1, Messages: msgs, QoS: QoS(tt.qos), Protocol: tt.proto, InFlight: 50, Seed: 11, RunID: "wire",
			})
			if err != nil || rep.Sent != msgs || rep.Errors != 0 || rep.Retries != 0 {
				t.Fatalf("report %+v, err %v", rep, err)
			}
			waitFor(t, "broker to read every publish", 5*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) >= msgs
			})
			mu.Lock()
			defer mu.Unlock()
			if len(got) != msgs {
				t.Fatalf("broker got %d publishes, want %d", len(got), msgs)
			}
			devs := testFleet(t, Options{Trucks: 1, Seed: 11})
			gen := newTruck(&devs[0], 11, 1)
			w := newPayloadWriter(devs[0].ID, "wire")
			for i, pkt := range got {
				at := 3 + (int(pkt[1])<<8 | int(pkt[2])) // header byte, topic
				if tt.qos > 0 {
					at += 2 // packet id
				}
				if tt.proto == "5" {
					at += 1 + int(pkt[at]) // properties
				}
				var p struct{ TS time.Time }
				if err := json.Unmarshal(pkt[at:], &p); err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
				seq := uint64(i + 1)
				stream, body := gen.next()
				payload := w.append(nil, seq, p.TS, body)
				want := appendPublish(nil, byte(tt.qos), uint16(seq), "devices/"+devs[0].ID+"/", stream, payload, tt.proto == "5")
				// appendPublish writes the remaining length as a varint; the
				// broker handed over what follows it.
				want = append(want[:1], want[len(want)-(len(pkt)-1):]...)
				if !bytes.Equal(pkt, want) {
					t.Fatalf("publish %d:\n got %q\nwant %q", i, pkt, want)
				}
			}
		})
	}
}
