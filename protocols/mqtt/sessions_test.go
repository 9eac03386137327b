package mqtt

import (
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // offsets from t0 of each take
		want  []bool
	}{
		{"unlimited", 0, 0, []time.Duration{0, 0, 0, 0}, []bool{true, true, true, true}},
		{"burst then refused", 1, 2, []time.Duration{0, 0, 0}, []bool{true, true, false}},
		{"refills at rate", 2, 1, []time.Duration{0, 0, 400 * time.Millisecond, 500 * time.Millisecond, 600 * time.Millisecond}, []bool{true, false, false, true, false}},
		{"refill capped at burst", 10, 2, []time.Duration{0, 0, 10 * time.Second, 10 * time.Second, 10 * time.Second}, []bool{true, true, true, true, false}},
		{"fractional rate", 0.5, 1, []time.Duration{0, time.Second, 2 * time.Second}, []bool{true, false, true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tab := newDeviceTable(c.rate, c.burst)
			for i, at := range c.at {
				ok, wait := tab.take("d", t0.Add(at))
				if ok != c.want[i] {
					t.Fatalf("take %d at +%s: %v, want %v", i, at, ok, c.want[i])
				}
				if !ok && (wait <= 0 || wait > time.Duration(float64(time.Second)/c.rate)) {
					t.Fatalf("take %d: wait %s", i, wait)
				}
			}
		})
	}
}

func TestDeviceTableOwnershipAndSweep(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tab := newDeviceTable(1, 1)
	a, b := &session{}, &session{}
	tab.own("truck-1", a, t0)
	tab.own("truck-1", b, t0) // b took the session over
	if tab.release("truck-1", a) {
		t.Error("the taken-over session released the device")
	}
	if tab.owner("truck-1") != b {
		t.Error("owner is not the newest session")
	}
	tab.take("truck-1", t0)
	if !tab.release("truck-1", b) {
		t.Error("the current session did not release the device")
	}
	tab.sweep(t0.Add(500 * time.Millisecond))
	if tab.len() != 1 {
		t.Error("swept a device whose budget is not full again: reconnecting would refill it")
	}
	tab.sweep(t0.Add(2 * time.Second))
	if tab.len() != 0 {
		t.Error("kept a gone device with a full budget")
	}
}

// TestMaxRate: over mqtt.max_rate, MQTT 5 publishes get PUBACK/PUBREC 0x96
// in order with the accepted ones, MQTT 3.1.1 clients are slowed to the
// rate, QoS 0 is dropped; the budget is per device, not per connection.
func TestMaxRate(t *testing.T) {
	t.Run("v5", func(t *testing.T) {
		buf := &heldBuffer{}
		s := startWith(t, Options{MaxRate: 1, MaxBurst: 3}, buf, nil, nil)
		c := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
		for i := uint16(1); i <= 5; i++ {
			c.publish(1, i, "devices/truck-1/position", "x")
		}
		c.publish(2, 6, "devices/truck-1/position", "x")
		c.publish(0, 0, "devices/truck-1/position", "dropped")
		waitFor(t, func() bool { return buf.appended() == 3 })
		c.expectNothing(50 * time.Millisecond) // the refusals wait for the accepted acks
		buf.release(nil)
		for i := uint16(1); i <= 6; i++ {
			pk, err := c.read(2 * time.Second)
			if err != nil {
				t.Fatalf("ack %d: %v", i, err)
			}
			want := byte(0)
			if i > 3 {
				want = packets.ErrMessageRateTooHigh.Code
			}
			if pk.PacketID != i || pk.ReasonCode != want {
				t.Fatalf("ack %d: id %d reason 0x%02x, want reason 0x%02x", i, pk.PacketID, pk.ReasonCode, want)
			}
			if i == 6 && pk.FixedHeader.Type != packets.Pubrec {
				t.Fatalf("QoS 2 refusal is type %d, want PUBREC", pk.FixedHeader.Type)
			}
		}
		st := s.Stats()
		if st.RefusedRate != 3 || st.DroppedRate != 1 || buf.appended() != 3 {
			t.Fatalf("stats %+v, appended %d", st, buf.appended())
		}
		// Reconnecting does not refill the budget.
		c2 := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
		c2.publish(1, 1, "devices/truck-1/position", "x")
		if pk := c2.expect(packets.Puback); pk.ReasonCode != packets.ErrMessageRateTooHigh.Code {
			t.Fatalf("after reconnect: reason 0x%02x, want 0x96", pk.ReasonCode)
		}
		// Another device has its own budget.
		c3 := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-2"})
		c3.publish(1, 1, "devices/truck-2/position", "x")
		waitFor(t, func() bool { return buf.release(nil) == 1 })
		if pk := c3.expect(packets.Puback); pk.ReasonCode != 0 {
			t.Fatalf("other device: reason 0x%02x", pk.ReasonCode)
		}
	})
	t.Run("v3.1.1", func(t *testing.T) {
		buf := &heldBuffer{}
		s := startWith(t, Options{MaxRate: 20, MaxBurst: 2}, buf, nil, nil)
		c := mustDial(t, s, connectOpts{ver: 4, clientID: "truck-1"})
		start := time.Now()
		const n = 12
		for i := uint16(1); i <= n; i++ {
			c.publish(1, i, "devices/truck-1/position", fmt.Sprint(i))
		}
		c.publish(0, 0, "devices/truck-1/position", "qos0")
		waitFor(t, func() bool { buf.release(nil); return buf.appended() == n })
		buf.release(nil) // what was appended after the last release
		// 2 at once, then 10 at 20/s: about 500ms.
		if el := time.Since(start); el < 400*time.Millisecond {
			t.Fatalf("%d messages stored in %s: not slowed to 20/s", n, el)
		}
		for i := uint16(1); i <= n; i++ {
			if pk := c.expect(packets.Puback); pk.PacketID != i || pk.ReasonCode != 0 {
				t.Fatalf("ack %d: id %d reason 0x%02x", i, pk.PacketID, pk.ReasonCode)
			}
		}
		if string(buf.data[n-1][len(buf.data[n-1])-2:]) != "12" {
			t.Error("order changed while paused")
		}
		waitFor(t, func() bool { return s.Stats().DroppedRate+uint64(buf.appended()-n) == 1 })
		if st := s.Stats(); st.PausedRate < 10 || st.RefusedRate != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}
