package mqtt

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// encodePacket encodes pk with mochi's codec, for seeds.
func encodePacket(t testing.TB, pk packets.Packet) []byte {
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&b)
	}
	if err != nil {
		t.Fatalf("encode %+v id %d topic %q: %v", pk.FixedHeader, pk.PacketID, pk.TopicName, err)
	}
	return b.Bytes()
}

func connectBytes(t testing.TB, ver byte, id string) []byte {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: ver}
	pk.Connect = packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id}
	return encodePacket(t, pk)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// FuzzListenerBytes sends arbitrary bytes to a running listener: the
// process must not panic, and a well-formed client still connects after
// each input. The seeds are valid CONNECTs of each version followed by
// malformed or hostile packets, including the kind of truncated MQTT 5
// SUBSCRIBE that once panicked mochi.
func FuzzListenerBytes(f *testing.F) {
	c5, c4 := connectBytes(f, 5, "fuzz5"), connectBytes(f, 4, "fuzz4")
	pub := func(ver, qos byte, id uint16, topic string, props packets.Properties) []byte {
		return encodePacket(f, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: ver,
			PacketID: id, TopicName: topic, Payload: []byte(`{"x":1}`), Properties: props})
	}
	sub5 := encodePacket(f, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5,
		PacketID: 1, Filters: packets.Subscriptions{{Filter: "devices/+/position", Qos: 1}}, Properties: packets.Properties{SubscriptionIdentifier: []int{5}}})
	seeds := [][]byte{
		c5, c4,
		cat(c5, []byte{0x82, 0x03, 0x00, 0x01, 0x05}),                         // SUBSCRIBE: properties longer than the packet
		cat(c5, []byte{0x82, 0x04, 0x00, 0x01, 0x00, 0x00}),                   // SUBSCRIBE: no filter, truncated
		cat(c5, []byte{0x82, 0x07, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff, 0x7f}), // SUBSCRIBE: property length overflows
		cat(c5, sub5[:len(sub5)-3]),                                           // SUBSCRIBE cut inside the filter
		cat(c5, []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'}),        // SUBSCRIBE: no options byte
		cat(c5, []byte{0xa2, 0x03, 0x00, 0x02, 0x09}),                         // UNSUBSCRIBE: truncated properties
		cat(c5, []byte{0xf0, 0x02, 0x18, 0x05}),                               // AUTH: truncated properties
		cat(c5, []byte{0x62, 0x02, 0x00, 0x09}),                               // PUBREL for an unknown id
		cat(c5, pub(5, 1, 1, "devices/fuzz5/position", packets.Properties{TopicAlias: 70, TopicAliasFlag: true})),
		cat(c5, pub(5, 1, 2, "", packets.Properties{TopicAlias: 1, TopicAliasFlag: true})), // alias never set
		cat(c5, pub(5, 2, 3, "devices/fuzz5/energy", packets.Properties{}), pub(5, 2, 3, "devices/fuzz5/energy", packets.Properties{})),
		cat(c5, []byte{0x32, 0x1c, 0x00, 0x16}, []byte("devices/fuzz5/position"), []byte{0, 0, 0, 'x'}), // QoS 1, packet id 0
		cat(c4, pub(4, 1, 1, "devices/+/position", packets.Properties{})),                               // wildcard in a topic name
		cat(c4, pub(4, 3, 1, "devices/fuzz4/position", packets.Properties{})),                           // QoS 3
		cat(c4, []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', '#', 0x03}),                        // 3.1.1 SUBSCRIBE QoS 3
		cat(c4, c4), // second CONNECT
		cat(c4, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}),                          // bad remaining length
		[]byte{0x82, 0x04, 0, 1, 0, 0},                                               // SUBSCRIBE before CONNECT
		[]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 6, 2, 0, 30, 0, 0},              // protocol version 6
		[]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'X', 'X', 4, 2, 0, 30, 0, 0},              // wrong protocol name
		[]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc6, 0, 30, 0, 2, 'a', 'b'}, // user+password flags, no fields
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	buf := &heldBuffer{}
	s, err := New(Options{TCP: "127.0.0.1:0", ConnectTimeout: time.Second}, buf, nil, nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	defer s.Close(context.Background())
	addr, _ := s.Addr()
	healthy := connectBytes(f, 5, "health")
	f.Fuzz(func(t *testing.T, b []byte) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(b)
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		io.Copy(io.Discard, conn)
		conn.Close()
		buf.release(nil)

		hc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer hc.Close()
		hc.Write(healthy)
		hc.SetReadDeadline(time.Now().Add(2 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(hc, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
			t.Fatalf("a valid client no longer connects after input %x: %x %v", b, ack, err)
		}
	})
}

// FuzzRecord builds the stored record for arbitrary topics, identities and
// MQTT 5 properties: the device is always the authenticated identity in
// registry mode, a stream is set only for devices/{that device}/{stream},
// and the record survives the codec.
func FuzzRecord(f *testing.F) {
	f.Add("devices/truck-1/position", "truck-1", "truck-1", true, byte(5), "trace", "t-1", "application/json", []byte(`{"a":1}`))
	f.Add("devices/truck-2/position", "truck-1", "truck-1", true, byte(4), "", "", "", []byte{0xff})
	f.Add("devices/truck-1/position/raw", "", "truck-1", false, byte(5), "k", "v", "", []byte{})
	f.Add("sensors/x", "", "meter-9", false, byte(4), "", "", "", []byte("x"))
	f.Add("devices//position", "", "c", false, byte(5), "", "", "", []byte("x"))
	f.Add("devices/truck-1/"+string(make([]byte, 130)), "", "c", false, byte(5), "\x00", "\xff", "\x00", []byte("x"))
	f.Add("$SYS/devices/x/y", "", "c", false, byte(4), "", "", "", []byte(nil))
	open, err := New(Options{}, &heldBuffer{}, nil, nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	registry, err := New(Options{}, &heldBuffer{}, fakeAuth{}, ownTopics{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic, user, clientID string, reg bool, ver byte, key, val, ct string, payload []byte) {
		s := open
		if reg {
			s = registry
		}
		cl := s.mochi.NewClient(nil, "fuzz", clientID, false)
		cl.Properties.Username = []byte(user)
		cl.Properties.ProtocolVersion = ver
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: topic, Payload: payload}
		pk.Properties.ContentType = ct
		if key != "" {
			pk.Properties.User = []packets.UserProperty{{Key: key, Val: val}}
		}
		rec := s.record(cl, &pk, s.identity(cl))
		device, stream, ok := devices.ParseTopic(topic)
		switch {
		case reg && rec.Device != user:
			t.Fatalf("registry mode: device %q, want the identity %q", rec.Device, user)
		case !reg && ok && rec.Device != device:
			t.Fatalf("open mode: device %q, topic says %q", rec.Device, device)
		case !reg && !ok && rec.Device != clientID:
			t.Fatalf("open mode: device %q, want the client id %q", rec.Device, clientID)
		case rec.Stream != "" && (!ok || device != rec.Device || stream != rec.Stream):
			t.Fatalf("stream %q for topic %q and device %q", rec.Stream, topic, rec.Device)
		case ok && device == rec.Device && rec.Stream != stream:
			t.Fatalf("stream %q, want %q", rec.Stream, stream)
		}
		data := gateway.EncodeRecord(nil, &rec)
		var back gateway.Record
		if err := gateway.DecodeRecord(data, &back); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if back.Device != rec.Device || back.Topic != topic || back.Stream != rec.Stream || !bytes.Equal(back.Payload, payload) ||
			(ver == 5 && (back.ContentType != ct || len(back.Properties) != len(rec.Properties))) {
			t.Fatalf("round trip: %+v, want %+v", back, rec)
		}
	})
}
