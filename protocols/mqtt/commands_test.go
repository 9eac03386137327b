package mqtt

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

func deliverAsync(s *Server, cmd gateway.Command, timeout time.Duration) <-chan error {
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		res <- s.Deliver(ctx, cmd)
	}()
	return res
}

func userProp(pk packets.Packet, key string) string {
	for _, up := range pk.Properties.User {
		if up.Key == key {
			return up.Val
		}
	}
	return ""
}

// TestDeliver sends commands to a raw client of each protocol version:
// Deliver returns only after the device's PUBACK, in registry mode, with
// the command's metadata as MQTT 5 properties.
func TestDeliver(t *testing.T) {
	reg := fakeRegistry{passwords: map[string]string{"truck-1": "pw", "truck-2": "pw"}}
	acl, err := devices.NewACL(devices.DefaultPublishACL, devices.DefaultSubscribeACL)
	if err != nil {
		t.Fatal(err)
	}
	s := startWith(t, Options{}, &heldBuffer{}, reg, acl)
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			cmd := gateway.Command{ID: "cmd-1", Device: "truck-1", Payload: []byte(`{"open":"door"}`),
				Headers: []gateway.Header{{Key: "content-type", Value: []byte("application/json")}, {Key: "origin", Value: []byte("dispatch")}},
				Expires: time.Now().Add(time.Hour)}
			if err := s.Deliver(context.Background(), cmd); !errors.Is(err, gateway.ErrNotConnected) {
				t.Fatalf("device not connected: %v", err)
			}
			c := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1", user: "truck-1", pass: "pw"})
			if err := s.Deliver(context.Background(), cmd); !errors.Is(err, gateway.ErrNotConnected) {
				t.Fatalf("device connected, not subscribed: %v", err)
			}
			if codes := c.subscribe(1, packets.Subscription{Filter: "devices/truck-1/commands", Qos: 1, Identifier: 7}); codes[0] != 1 {
				t.Fatalf("SUBACK %v", codes)
			}
			res := deliverAsync(s, cmd, 5*time.Second)
			pub := c.expect(packets.Publish)
			// The device's own QoS 1 publish with the same packet id (ids
			// are per direction) makes mochi drop the command from its
			// inflight table; the command's PUBACK is still recognised.
			c.publish(1, pub.PacketID, "devices/truck-1/position", "x")
			if pub.TopicName != "devices/truck-1/commands" || string(pub.Payload) != `{"open":"door"}` || pub.FixedHeader.Qos != 1 || pub.PacketID == 0 {
				t.Fatalf("command publish %+v", pub)
			}
			if ver == 5 {
				if pub.Properties.ContentType != "application/json" || userProp(pub, "origin") != "dispatch" || userProp(pub, CommandIDProperty) != "cmd-1" {
					t.Errorf("properties %+v", pub.Properties)
				}
				if pub.Properties.MessageExpiryInterval < 3590 || pub.Properties.MessageExpiryInterval > 3600 {
					t.Errorf("message expiry interval %d", pub.Properties.MessageExpiryInterval)
				}
				if len(pub.Properties.SubscriptionIdentifier) != 1 || pub.Properties.SubscriptionIdentifier[0] != 7 {
					t.Errorf("subscription identifiers %v", pub.Properties.SubscriptionIdentifier)
				}
			}
			select {
			case err := <-res:
				t.Fatalf("Deliver returned %v before the PUBACK", err)
			case <-time.After(100 * time.Millisecond):
			}
			c.puback(pub.PacketID, 0)
			if err := <-res; err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if s.Stats().Commands == 0 {
				t.Error("not counted")
			}

			// Another device is not reached by truck-1's commands.
			other := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-2", user: "truck-2", pass: "pw"})
			if codes := other.subscribe(1, packets.Subscription{Filter: "devices/truck-2/commands/#", Qos: 1}); codes[0] != 1 {
				t.Fatalf("SUBACK %v", codes)
			}
			res = deliverAsync(s, gateway.Command{ID: "cmd-2", Device: "truck-2", Payload: []byte("x")}, 5*time.Second)
			p2 := other.expect(packets.Publish)
			other.puback(p2.PacketID, 0)
			if err := <-res; err != nil {
				t.Fatalf("Deliver to truck-2: %v", err)
			}
			c.expectNothing(50 * time.Millisecond)

			// No PUBACK within ctx: an error, and the command is taken
			// back from the session.
			res = deliverAsync(s, gateway.Command{ID: "cmd-3", Device: "truck-1", Payload: []byte("x")}, 200*time.Millisecond)
			pub = c.expect(packets.Publish)
			if err := <-res; !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("no PUBACK: %v", err)
			}
			if cl, ok := s.mochi.Clients.Get("truck-1"); !ok {
				t.Fatal("client gone")
			} else if _, ok := cl.State.Inflight.Get(pub.PacketID); ok {
				t.Error("timed-out command left in the inflight table")
			}
			c.puback(pub.PacketID, 0) // late: ignored

			// Disconnecting while the command waits: ErrNotConnected.
			res = deliverAsync(s, gateway.Command{ID: "cmd-4", Device: "truck-1", Payload: []byte("x")}, 5*time.Second)
			c.expect(packets.Publish)
			c.conn.Close()
			if err := <-res; !errors.Is(err, gateway.ErrNotConnected) {
				t.Fatalf("disconnected before PUBACK: %v", err)
			}
			waitFor(t, func() bool { return s.devices.owner("truck-1") == nil })
			other.conn.Close()
		})
	}
}

// TestDeliverEdgeCases: negative PUBACK, expired command, QoS 0
// subscription, open mode.
func TestDeliverEdgeCases(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	c := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	c.subscribe(1, packets.Subscription{Filter: "devices/truck-1/commands", Qos: 1})

	if err := s.Deliver(context.Background(), gateway.Command{ID: "old", Device: "truck-1", Expires: time.Now().Add(-time.Second)}); !errors.Is(err, ErrCommandExpired) {
		t.Fatalf("expired: %v", err)
	}
	c.expectNothing(50 * time.Millisecond)

	res := deliverAsync(s, gateway.Command{ID: "no", Device: "truck-1", Payload: []byte("x")}, 5*time.Second)
	pub := c.expect(packets.Publish)
	c.puback(pub.PacketID, packets.ErrNotAuthorized.Code)
	if err := <-res; !errors.Is(err, ErrCommandRejected) {
		t.Fatalf("negative PUBACK: %v", err)
	}

	q0 := mustDial(t, s, connectOpts{ver: 4, clientID: "meter-1"})
	q0.subscribe(1, packets.Subscription{Filter: "devices/meter-1/commands", Qos: 0})
	if err := s.Deliver(context.Background(), gateway.Command{ID: "q0", Device: "meter-1", Payload: []byte("x")}); err != nil {
		t.Fatalf("QoS 0 subscription: %v", err)
	}
	if pub := q0.expect(packets.Publish); pub.FixedHeader.Qos != 0 || string(pub.Payload) != "x" {
		t.Fatalf("QoS 0 command %+v", pub)
	}

	// A wildcard subscription that is not the commands topic does not count.
	w := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-2"})
	w.subscribe(1, packets.Subscription{Filter: "devices/truck-2/position", Qos: 1})
	if err := s.Deliver(context.Background(), gateway.Command{ID: "x", Device: "truck-2"}); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("subscribed elsewhere: %v", err)
	}
}

// TestDeliverToPaho delivers to the Eclipse Paho MQTT 5 client, which
// acknowledges on its own.
func TestDeliverToPaho(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	conn := dialTCP(t, s)
	got := make(chan *paho.Publish, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { got <- pr.Packet; return true, nil },
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "truck-7", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/truck-7/commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		id := fmt.Sprintf("cmd-%d", i)
		if err := s.Deliver(ctx, gateway.Command{ID: id, Device: "truck-7", Payload: []byte(id)}); err != nil {
			t.Fatalf("Deliver %s: %v", id, err)
		}
		p := <-got
		if string(p.Payload) != id || p.Properties.User.Get(CommandIDProperty) != id {
			t.Fatalf("paho got %q (%v)", p.Payload, p.Properties.User)
		}
	}
}

func TestDisconnectDevice(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	if s.DisconnectDevice("truck-1") {
		t.Error("disconnected a device that is not connected")
	}
	v5 := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	v3 := mustDial(t, s, connectOpts{ver: 4, clientID: "truck-2"})
	other := mustDial(t, s, connectOpts{ver: 4, clientID: "truck-3"})
	// mochi establishes the session just after it sends CONNACK.
	waitFor(t, func() bool { return s.devices.owner("truck-1") != nil && s.devices.owner("truck-2") != nil })
	if !s.DisconnectDevice("truck-1") || !s.DisconnectDevice("truck-2") {
		t.Fatal("connected devices not disconnected")
	}
	if pk, err := v5.read(3 * time.Second); !errors.Is(err, errDisconnected) || pk.ReasonCode != packets.ErrAdministrativeAction.Code {
		t.Errorf("MQTT 5: %v reason 0x%02x, want DISCONNECT 0x98", err, pk.ReasonCode)
	}
	v3.expectClosed(3 * time.Second)
	other.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, (*packets.Packet).PingreqEncode)
	other.expect(packets.Pingresp)
}
