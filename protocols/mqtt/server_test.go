package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// heldBuffer completes appends only when the test releases them, and can be
// switched to full; it records what was appended.
type heldBuffer struct {
	mu      sync.Mutex
	full    bool
	pending []func(error)
	data    [][]byte
}

func (b *heldBuffer) Append(data []byte, done func(error)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.full {
		return gateway.ErrFull
	}
	b.data = append(b.data, bytes.Clone(data)) // the caller may reuse data
	b.pending = append(b.pending, done)
	return nil
}

func (b *heldBuffer) release(err error) int {
	b.mu.Lock()
	p := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, done := range p {
		done(err)
	}
	return len(p)
}

func (b *heldBuffer) setFull(v bool) { b.mu.Lock(); b.full = v; b.mu.Unlock() }
func (b *heldBuffer) appended() int  { b.mu.Lock(); defer b.mu.Unlock(); return len(b.data) }
func (b *heldBuffer) Read(ctx context.Context, _, _ int) ([]gateway.Entry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (b *heldBuffer) Commit(gateway.Offset) error { return nil }
func (b *heldBuffer) Close() error                { return nil }

func startServer(t *testing.T, buf gateway.Buffer, auth Authenticator, authz Authorizer) *Server {
	t.Helper()
	return startWith(t, Options{}, buf, auth, authz)
}

func TestAckOnlyAfterDurableAndInOrder(t *testing.T) {
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			buf := &heldBuffer{}
			s := startServer(t, buf, nil, nil)
			c, code := dial(t, s, ver, "truck-1", "", "")
			if code != 0 {
				t.Fatalf("connack %x", code)
			}
			for i := uint16(1); i <= 50; i++ {
				c.publish(1, i, "devices/truck-1/position", fmt.Sprintf(`{"seq":%d}`, i))
			}
			waitFor(t, func() bool { return buf.appended() == 50 })
			c.expectNothing(100 * time.Millisecond)
			if n := buf.release(nil); n != 50 {
				t.Fatalf("released %d", n)
			}
			for i := uint16(1); i <= 50; i++ {
				pk, err := c.read(2 * time.Second)
				if err != nil {
					t.Fatalf("ack %d: %v", i, err)
				}
				if pk.FixedHeader.Type != packets.Puback || pk.PacketID != i || pk.ReasonCode != 0 {
					t.Fatalf("ack %d: got type %d id %d reason %x", i, pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
				}
			}
			var rec gateway.Record
			if err := gateway.DecodeRecord(buf.data[0], &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Device != "truck-1" || rec.Stream != "position" || rec.Protocol != "mqtt" || string(rec.Payload) != `{"seq":1}` || rec.ID == "" {
				t.Errorf("record = %+v", rec)
			}
		})
	}
}

func TestFailedAppendIsNeverAcked(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, buf, nil, nil)
	c, _ := dial(t, s, 4, "truck-1", "", "")
	c.publish(1, 1, "devices/truck-1/position", "x")
	waitFor(t, func() bool { return buf.appended() == 1 })
	buf.release(errors.New("disk on fire"))
	// The connection is closed without a PUBACK, so the device resends.
	pk, err := c.read(2 * time.Second)
	if err == nil {
		t.Fatalf("got packet type %d after a failed append, want the connection closed", pk.FixedHeader.Type)
	}
}

func TestBufferFullMQTT5GetsQuotaExceeded(t *testing.T) {
	buf := &heldBuffer{}
	buf.setFull(true)
	s := startServer(t, buf, nil, nil)
	c, _ := dial(t, s, 5, "truck-1", "", "")
	c.publish(1, 7, "devices/truck-1/position", "x")
	pk, err := c.read(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 || pk.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("got type %d id %d reason %x, want PUBACK 0x97", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
	}
	if s.Stats().RefusedFull != 1 {
		t.Errorf("stats = %+v", s.Stats())
	}
}

func TestBufferFullMQTT311PausesThenAcks(t *testing.T) {
	buf := &heldBuffer{}
	buf.setFull(true)
	s := startServer(t, buf, nil, nil)
	c, _ := dial(t, s, 4, "truck-1", "", "")
	c.publish(1, 1, "devices/truck-1/position", "a")
	c.publish(1, 2, "devices/truck-1/position", "b")
	c.expectNothing(150 * time.Millisecond)
	if buf.appended() != 0 {
		t.Fatal("appended while full")
	}
	buf.setFull(false)
	waitFor(t, func() bool { return buf.appended() == 2 })
	buf.release(nil)
	for i := uint16(1); i <= 2; i++ {
		pk, err := c.read(2 * time.Second)
		if err != nil || pk.PacketID != i || pk.ReasonCode != 0 {
			t.Fatalf("ack %d: %+v %v", i, pk.FixedHeader, err)
		}
	}
	if string(buf.data[0][len(buf.data[0])-1:]) != "a" {
		t.Error("order changed while paused")
	}
}

func TestQoS2ExactlyOnceIntoBuffer(t *testing.T) {
	dir := t.TempDir()
	log, err := buffer.Open(buffer.Options{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	s := startServer(t, log, nil, nil)
	c, _ := dial(t, s, 5, "meter-1", "", "")
	c.publish(2, 9, "devices/meter-1/energy", "1")
	pk, err := c.read(2 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Pubrec || pk.PacketID != 9 {
		t.Fatalf("want PUBREC 9, got %+v %v", pk, err)
	}
	// A retransmission before PUBREL must not create a second record.
	dup := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: true}, ProtocolVersion: 5,
		TopicName: "devices/meter-1/energy", PacketID: 9, Payload: []byte("1")}
	c.write(&dup, (*packets.Packet).PublishEncode)
	if pk, err := c.read(2 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pubrec {
		t.Fatalf("want PUBREC for the duplicate, got %+v %v", pk, err)
	}
	c.pubrel(9)
	if pk, err := c.read(2 * time.Second); err != nil || pk.FixedHeader.Type != packets.Pubcomp || pk.PacketID != 9 || pk.ReasonCode != 0 {
		t.Fatalf("want PUBCOMP 9, got %+v %v", pk, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	entries, err := log.Read(ctx, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("buffer has %d records, want 1", len(entries))
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if more, _ := log.Read(ctx2, 10, 1<<20); len(more) != 0 {
		t.Fatalf("duplicate QoS 2 publish stored twice")
	}
}

type fakeAuth map[string]string

func (f fakeAuth) Authenticate(_ context.Context, device, password string) error {
	if p, ok := f[device]; ok && p == password {
		return nil
	}
	return fmt.Errorf("device %s: %w", device, devices.ErrBadCredentials)
}

type ownTopics struct{}

func (ownTopics) CanPublish(device, topic string) bool {
	d, _, ok := devices.ParseTopic(topic)
	return ok && d == device
}
func (ownTopics) CanSubscribe(device, filter string) bool {
	return filter == "devices/"+device+"/commands"
}

func TestAuthAndACL(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, buf, fakeAuth{"truck-1": "s3cret", "truck-2": "other"}, ownTopics{})
	cases := []struct {
		name, client, user, pass string
		ver                      byte
		ok                       bool
	}{
		{"right password", "truck-1", "truck-1", "s3cret", 5, true},
		{"right password 3.1.1", "truck-1", "truck-1", "s3cret", 4, true},
		{"wrong password", "truck-1", "truck-1", "nope", 5, false},
		{"anonymous", "truck-1", "", "", 4, false},
		{"client id of another device", "truck-2", "truck-1", "s3cret", 5, false},
		{"unknown device", "ghost", "ghost", "x", 4, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, code := dial(t, s, c.ver, c.client, c.user, c.pass)
			if (code == 0) != c.ok {
				t.Errorf("connack reason %x, want accepted=%v", code, c.ok)
			}
		})
	}
	// Publishing to another device's topic is refused and never stored.
	c, _ := dial(t, s, 5, "truck-1", "truck-1", "s3cret")
	c.publish(1, 3, "devices/truck-2/position", "spoof")
	pk, err := c.read(2 * time.Second)
	if err != nil || pk.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("want PUBACK 0x87, got %+v %v", pk, err)
	}
	if buf.appended() != 0 {
		t.Fatal("spoofed message was stored")
	}
	c3, _ := dial(t, s, 4, "truck-1", "truck-1", "s3cret")
	c3.publish(1, 4, "devices/truck-2/position", "spoof")
	if _, err := c3.read(2 * time.Second); err == nil {
		t.Fatal("3.1.1 client publishing to another device's topic was not disconnected")
	}
}

// refusingBuffer refuses every append with err.
type refusingBuffer struct {
	heldBuffer
	err error
}

func (b *refusingBuffer) Append([]byte, func(error)) error { return b.err }

// TestAppendRefused: a record the buffer will never take (too large) gets
// MQTT 5 PUBACK 0x95 and no resend loop; MQTT 3.1.1 cannot be told and is
// disconnected unacknowledged; a closing buffer never yields an ack.
func TestAppendRefused(t *testing.T) {
	tooLarge := fmt.Errorf("%w: 2000000 bytes", buffer.ErrTooLarge)
	cases := []struct {
		name   string
		err    error
		ver    byte
		reason byte // 0: the connection closes without an ack
	}{
		{"too large, MQTT 5", tooLarge, 5, packets.ErrPacketTooLarge.Code},
		{"too large, MQTT 3.1.1", tooLarge, 4, 0},
		{"other failure, MQTT 5", errors.New("disk gone"), 5, packets.ErrUnspecifiedError.Code},
		{"closed, MQTT 5", gateway.ErrClosed, 5, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t, &refusingBuffer{err: c.err}, nil, nil)
			cl, _ := dial(t, s, c.ver, "truck-1", "", "")
			cl.publish(1, 5, "devices/truck-1/position", "x")
			if c.reason == 0 {
				cl.expectClosed(3 * time.Second)
				return
			}
			pk := cl.expect(packets.Puback)
			if pk.PacketID != 5 || pk.ReasonCode != c.reason {
				t.Fatalf("PUBACK id %d reason 0x%02x, want 0x%02x", pk.PacketID, pk.ReasonCode, c.reason)
			}
		})
	}
}

// A client with receive_maximum QoS 1 messages unacknowledged is not read
// from until acks are written: MQTT 3.1.1 has no such limit of its own.
func TestReceiveMaximumPausesReads(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{ReceiveMaximum: 3}, buf, nil, nil)
	c, code := dial(t, s, 4, "truck-1", "", "")
	if code != 0 {
		t.Fatalf("connack %x", code)
	}
	for i := uint16(1); i <= 8; i++ {
		c.publish(1, i, "devices/truck-1/position", fmt.Sprintf(`{"seq":%d}`, i))
	}
	want := uint16(1)
	for _, stored := range []int{3, 6, 8} {
		waitFor(t, func() bool { return buf.appended() == stored })
		time.Sleep(100 * time.Millisecond)
		if n := buf.appended(); n != stored {
			t.Fatalf("%d messages stored with %d unacknowledged at most; want %d", n, 3, stored)
		}
		buf.release(nil)
		for ; want <= uint16(stored); want++ {
			if ack := c.expect(packets.Puback); ack.PacketID != want {
				t.Fatalf("PUBACK %d, want %d", ack.PacketID, want)
			}
		}
	}
}
