package mqtt

import (
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/gateway"
)

// The embedded broker still serves local subscribers as a standard broker
// would, after the durable ack: these tests use a subscriber of each
// protocol version.

func TestLocalSubscribersGetMessagesAfterDurableAck(t *testing.T) {
	for _, pubVer := range []byte{4, 5} {
		for _, subVer := range []byte{4, 5} {
			t.Run(fmt.Sprintf("pub v%d sub v%d", pubVer, subVer), func(t *testing.T) {
				buf := &heldBuffer{}
				s := startWith(t, Options{}, buf, nil, nil)
				sub := mustDial(t, s, connectOpts{ver: subVer, clientID: "dashboard"})
				sub.subscribe(1, packets.Subscription{Filter: "devices/+/position", Qos: 1})
				pub := mustDial(t, s, connectOpts{ver: pubVer, clientID: "truck-1"})
				for i, qos := range []byte{1, 2} {
					pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: qos}, TopicName: "devices/truck-1/position",
						PacketID: uint16(10 + i), Payload: []byte(fmt.Sprintf(`{"seq":%d}`, i))}
					pk.Properties.ContentType = "application/json"
					pk.Properties.User = []packets.UserProperty{{Key: "trace", Val: "t-1"}}
					pk.Properties.ResponseTopic = "devices/truck-1/replies"
					pk.Properties.CorrelationData = []byte("c-1")
					pk.Mods.AllowResponseInfo = true // the codec writes response topic and correlation data only then
					pub.publishPacket(pk)
					waitFor(t, func() bool { return buf.appended() == i+1 })
					sub.expectNothing(100 * time.Millisecond) // not before the message is durable
					buf.release(nil)
					ackType := byte(packets.Puback)
					if qos == 2 {
						ackType = packets.Pubrec
					}
					pub.expect(ackType)
					got := sub.expect(packets.Publish)
					if got.TopicName != "devices/truck-1/position" || string(got.Payload) != string(pk.Payload) || got.FixedHeader.Qos != 1 {
						t.Fatalf("subscriber got %+v", got)
					}
					sub.puback(got.PacketID, 0)
					if pubVer == 5 && subVer == 5 {
						if got.Properties.ContentType != "application/json" || userProp(got, "trace") != "t-1" || got.Properties.ResponseTopic != "devices/truck-1/replies" || string(got.Properties.CorrelationData) != "c-1" {
							t.Errorf("MQTT 5 properties lost in fan-out: %+v", got.Properties)
						}
					}
					if qos == 2 {
						pub.pubrel(pk.PacketID)
						pub.expect(packets.Pubcomp)
					}
				}
			})
		}
	}
}

func TestRetainedMessages(t *testing.T) {
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			buf := &heldBuffer{}
			s := startWith(t, Options{}, buf, nil, nil)
			pub := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1"})
			pub.publishPacket(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, TopicName: "devices/truck-1/state", PacketID: 1, Payload: []byte("parked")})
			waitFor(t, func() bool { return buf.appended() == 1 })
			// Not retained before it is durable.
			early := mustDial(t, s, connectOpts{ver: ver, clientID: "early"})
			early.subscribe(1, packets.Subscription{Filter: "devices/truck-1/state", Qos: 1})
			buf.release(nil)
			pub.expect(packets.Puback)
			if got := early.expect(packets.Publish); string(got.Payload) != "parked" {
				t.Fatalf("live subscriber got %q", got.Payload)
			}

			late := mustDial(t, s, connectOpts{ver: ver, clientID: "late"})
			late.subscribe(1, packets.Subscription{Filter: "devices/+/state", Qos: 1})
			got := late.expect(packets.Publish)
			if string(got.Payload) != "parked" || !got.FixedHeader.Retain {
				t.Fatalf("retained message: %+v", got)
			}
			late.puback(got.PacketID, 0)

			// An empty retained message clears it.
			pub.publishPacket(packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}, TopicName: "devices/truck-1/state", PacketID: 2})
			waitFor(t, func() bool { return buf.release(nil) == 1 })
			pub.expect(packets.Puback)
			later := mustDial(t, s, connectOpts{ver: ver, clientID: "later"})
			later.subscribe(1, packets.Subscription{Filter: "devices/+/state", Qos: 1})
			later.expectNothing(100 * time.Millisecond)
		})
	}
}

// TestNoLocal: an MQTT 5 subscription with No Local does not get the
// client's own messages back, even though the gateway fans them out itself.
func TestNoLocal(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{}, buf, nil, nil)
	self := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	self.subscribe(1, packets.Subscription{Filter: "devices/truck-1/chat", Qos: 1, NoLocal: true})
	other := mustDial(t, s, connectOpts{ver: 5, clientID: "other"})
	other.subscribe(1, packets.Subscription{Filter: "devices/truck-1/chat", Qos: 1})
	self.publish(1, 1, "devices/truck-1/chat", "hi")
	waitFor(t, func() bool { return buf.release(nil) == 1 })
	self.expect(packets.Puback)
	other.expect(packets.Publish)
	self.expectNothing(100 * time.Millisecond)
}

func TestSharedSubscription(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{}, buf, nil, nil)
	var members []*rawClient
	for i := range 2 {
		m := mustDial(t, s, connectOpts{ver: 5, clientID: fmt.Sprintf("worker-%d", i)})
		m.subscribe(1, packets.Subscription{Filter: "$share/workers/devices/+/position", Qos: 1})
		members = append(members, m)
	}
	pub := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	const n = 10
	for i := uint16(1); i <= n; i++ {
		pub.publish(1, i, "devices/truck-1/position", fmt.Sprint(i))
	}
	waitFor(t, func() bool { buf.release(nil); return buf.appended() == n })
	buf.release(nil) // what was appended after the last release
	got := 0
	for deadline := time.Now().Add(5 * time.Second); got < n && time.Now().Before(deadline); {
		for _, m := range members {
			if pk, err := m.read(20 * time.Millisecond); err == nil {
				m.puback(pk.PacketID, 0)
				got++
			}
		}
	}
	for _, m := range members {
		m.expectNothing(100 * time.Millisecond)
	}
	if got != n {
		t.Fatalf("the share group got %d messages, want each of %d exactly once", got, n)
	}
}

// TestTopicAliasFromDevice: an MQTT 5 device that sends a topic alias is
// stored and fanned out under the full topic.
// TestFanOutKeepsMessagesIntactWhileDeviceSendsMore: the messages a device
// sent while earlier ones waited for the fsync reach local subscribers as
// sent. mochi reads each publish into the memory of the one before
// (ReuseRejectedPublishBodies), so the fanned-out copy must share none of it.
func TestFanOutKeepsMessagesIntactWhileDeviceSendsMore(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{}, buf, nil, nil)
	sub := mustDial(t, s, connectOpts{ver: 5, clientID: "dashboard"})
	sub.subscribe(1, packets.Subscription{Filter: "devices/#", Qos: 1})
	pub := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	const n = 20
	var sent []packets.Packet
	for i := range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, TopicName: fmt.Sprintf("devices/truck-1/s%0*d", i%4+1, i),
			PacketID: uint16(1 + i), Payload: []byte(fmt.Sprintf(`{"seq":%d,"pad":"%0*d"}`, i, 10*(i%3), 0))}
		pk.Properties.ContentType = fmt.Sprintf("application/x-%d", i)
		pk.Properties.User = []packets.UserProperty{{Key: fmt.Sprintf("k%d", i), Val: fmt.Sprintf("v-%d", i)}}
		pk.Properties.ResponseTopic = fmt.Sprintf("devices/truck-1/r%d", i)
		pk.Mods.AllowResponseInfo = true
		pub.publishPacket(pk)
		sent = append(sent, pk)
	}
	waitFor(t, func() bool { return buf.appended() == n }) // all read before any fan-out
	buf.release(nil)
	for range n {
		pub.expect(packets.Puback)
	}
	for i, want := range sent {
		got := sub.expect(packets.Publish)
		if got.TopicName != want.TopicName || string(got.Payload) != string(want.Payload) ||
			got.Properties.ContentType != want.Properties.ContentType || got.Properties.ResponseTopic != want.Properties.ResponseTopic ||
			userProp(got, want.Properties.User[0].Key) != want.Properties.User[0].Val {
			t.Fatalf("message %d: subscriber got topic %q payload %q properties %+v; sent topic %q payload %q properties %+v",
				i, got.TopicName, got.Payload, got.Properties, want.TopicName, want.Payload, want.Properties)
		}
		sub.puback(got.PacketID, 0)
	}
}

func TestTopicAliasFromDevice(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{}, buf, nil, nil)
	sub := mustDial(t, s, connectOpts{ver: 4, clientID: "dashboard"})
	sub.subscribe(1, packets.Subscription{Filter: "devices/#", Qos: 1})
	pub := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	first := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, TopicName: "devices/truck-1/position", PacketID: 1, Payload: []byte("a")}
	first.Properties.TopicAlias, first.Properties.TopicAliasFlag = 3, true
	pub.publishPacket(first)
	second := packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, PacketID: 2, Payload: []byte("b")}
	second.Properties.TopicAlias, second.Properties.TopicAliasFlag = 3, true
	pub.publishPacket(second)
	waitFor(t, func() bool { buf.release(nil); return buf.appended() == 2 })
	buf.release(nil) // what was appended after the last release
	for i := range 2 {
		var rec gateway.Record
		if err := gateway.DecodeRecord(buf.data[i], &rec); err != nil || rec.Topic != "devices/truck-1/position" || rec.Stream != "position" {
			t.Fatalf("record %d: %+v %v", i, rec, err)
		}
		if got := sub.expect(packets.Publish); got.TopicName != "devices/truck-1/position" {
			t.Fatalf("subscriber got topic %q", got.TopicName)
		}
	}
}

// TestWill: a device's will reaches local subscribers when it drops; in
// registry mode a will aimed at another device's topic is refused at
// CONNECT.
func TestWill(t *testing.T) {
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			reg := fakeRegistry{passwords: map[string]string{"truck-1": "pw", "truck-2": "pw"}}
			s := startWith(t, Options{}, &heldBuffer{}, reg, willACL{})
			watcher := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-2", user: "truck-2", pass: "pw"})
			watcher.subscribe(1, packets.Subscription{Filter: "devices/truck-1/status", Qos: 1})
			dev := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1", user: "truck-1", pass: "pw",
				willTopic: "devices/truck-1/status", willMsg: "offline", willQos: 1})
			dev.conn.Close() // no DISCONNECT: the will goes out
			if got := watcher.expect(packets.Publish); string(got.Payload) != "offline" {
				t.Fatalf("will: %+v", got)
			}

			spoof := newRawClient(t, dialTCP(t, s), ver)
			code := spoof.connect(connectOpts{ver: ver, clientID: "truck-1", user: "truck-1", pass: "pw",
				willTopic: "devices/truck-2/commands", willMsg: `{"unlock":true}`, willQos: 1})
			want := packets.ErrNotAuthorized.Code
			if ver == 4 {
				want = 0x05
			}
			if code != want {
				t.Fatalf("will to another device's commands: CONNACK 0x%02x, want 0x%02x", code, want)
			}
		})
	}
}

// willACL lets a device publish under its own tree and subscribe to
// another device's status, to watch wills.
type willACL struct{ ownTopics }

func (willACL) CanSubscribe(device, filter string) bool { return true }

// TestPersistentSessionGetsMissedMessages: a subscriber with a persistent
// session gets what was published while it was away.
func TestPersistentSessionGetsMissedMessages(t *testing.T) {
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			buf := &heldBuffer{}
			s := startWith(t, Options{}, buf, nil, nil)
			o := connectOpts{ver: ver, clientID: "dashboard", persistent: true}
			sub := mustDial(t, s, o)
			sub.subscribe(1, packets.Subscription{Filter: "devices/+/events", Qos: 1})
			sub.conn.Close()
			waitFor(t, func() bool { return s.Stats().Connections == 0 })
			pub := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1"})
			pub.publish(1, 1, "devices/truck-1/events", "door open")
			waitFor(t, func() bool { return buf.release(nil) == 1 })
			pub.expect(packets.Puback)
			back := newRawClient(t, dialTCP(t, s), ver)
			if code := back.connect(o); code != 0 {
				t.Fatalf("CONNACK 0x%02x", code)
			}
			if got := back.expect(packets.Publish); string(got.Payload) != "door open" {
				t.Fatalf("got %+v", got)
			}
		})
	}
}
