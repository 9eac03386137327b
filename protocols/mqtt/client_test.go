package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/gateway"
)

// startWith starts a server with opts (listeners on port 0 unless set) and
// closes it when the test ends.
func startWith(t testing.TB, opts Options, buf gateway.Buffer, auth Authenticator, authz Authorizer) *Server {
	t.Helper()
	if opts.TCP == "" {
		opts.TCP = "127.0.0.1:0"
	}
	if opts.FullRetry == 0 {
		opts.FullRetry = time.Millisecond
	}
	s, err := New(opts, buf, auth, authz, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// rawClient speaks MQTT with mochi's packet codec, so tests control every
// byte and see every packet.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	ver  byte
}

// connectOpts is what a test CONNECT carries.
type connectOpts struct {
	ver                  byte // 3, 4 (3.1.1) or 5
	clientID, user, pass string
	keepalive            uint16 // default 30
	persistent           bool   // clean session off (3.1.1), session expiry 1h (5)
	willTopic, willMsg   string
	willQos              byte
	willRetain           bool
	props                packets.Properties
}

func newRawClient(t testing.TB, conn net.Conn, ver byte) *rawClient {
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), ver: ver}
}

// connect sends CONNECT and returns the CONNACK reason, or 0xff when the
// connection closed without one.
func (c *rawClient) connect(o connectOpts) byte {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: o.ver, Properties: o.props}
	pk.Connect = packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: !o.persistent, Keepalive: o.keepalive, ClientIdentifier: o.clientID}
	if pk.Connect.Keepalive == 0 {
		pk.Connect.Keepalive = 30
	}
	if o.ver == 3 {
		pk.Connect.ProtocolName = []byte("MQIsdp")
	}
	if o.ver == 5 && o.persistent {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	if o.user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(o.user)
	}
	if o.pass != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(o.pass)
	}
	if o.willTopic != "" {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, o.willTopic, []byte(o.willMsg)
		pk.Connect.WillQos, pk.Connect.WillRetain = o.willQos, o.willRetain
	}
	c.write(&pk, (*packets.Packet).ConnectEncode)
	ack, err := c.read(3 * time.Second)
	if err != nil {
		return 0xff
	}
	if ack.FixedHeader.Type != packets.Connack {
		c.t.Fatalf("got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return ack.ReasonCode
}

// dialTCP connects to the server's TCP listener.
func dialTCP(t testing.TB, s *Server) net.Conn {
	t.Helper()
	addr, err := s.Addr()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// dial connects over TCP with a clean session and returns the CONNACK reason.
func dial(t testing.TB, s *Server, ver byte, clientID, user, pass string) (*rawClient, byte) {
	t.Helper()
	c := newRawClient(t, dialTCP(t, s), ver)
	return c, c.connect(connectOpts{ver: ver, clientID: clientID, user: user, pass: pass})
}

// mustDial is dial that fails the test unless the connection is accepted.
func mustDial(t testing.TB, s *Server, o connectOpts) *rawClient {
	t.Helper()
	c := newRawClient(t, dialTCP(t, s), o.ver)
	if code := c.connect(o); code != 0 {
		t.Fatalf("%s: connack reason 0x%02x", o.clientID, code)
	}
	return c
}

func (c *rawClient) write(pk *packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error) {
	c.t.Helper()
	if pk.ProtocolVersion == 0 {
		pk.ProtocolVersion = c.ver
	}
	var b bytes.Buffer
	if err := enc(pk, &b); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(b.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) publish(qos byte, id uint16, topic, payload string) {
	c.publishPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName: topic, PacketID: id, Payload: []byte(payload)})
}

func (c *rawClient) publishPacket(pk packets.Packet) {
	c.t.Helper()
	pk.FixedHeader.Type = packets.Publish
	c.write(&pk, (*packets.Packet).PublishEncode)
}

func (c *rawClient) pubrel(id uint16) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: id}
	c.write(&pk, (*packets.Packet).PubrelEncode)
}

func (c *rawClient) puback(id uint16, reason byte) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ReasonCode: reason}
	c.write(&pk, (*packets.Packet).PubackEncode)
}

// subscribe sends SUBSCRIBE and returns the SUBACK's reason codes.
func (c *rawClient) subscribe(id uint16, subs ...packets.Subscription) []byte {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id, Filters: subs}
	if len(subs) > 0 && subs[0].Identifier > 0 {
		pk.Properties.SubscriptionIdentifier = []int{subs[0].Identifier}
	}
	c.write(&pk, (*packets.Packet).SubscribeEncode)
	ack := c.expect(packets.Suback)
	if ack.PacketID != id {
		c.t.Fatalf("SUBACK for %d, want %d", ack.PacketID, id)
	}
	return ack.ReasonCodes
}

// errDisconnected is read's error for a DISCONNECT packet.
var errDisconnected = errors.New("server sent DISCONNECT")

// read returns the next packet, or an error on timeout, close or
// DISCONNECT (whose reason is in the returned packet).
func (c *rawClient) read(timeout time.Duration) (packets.Packet, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	var pk packets.Packet
	hb, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	// The packet has begun: a short timeout must not cut it in half.
	c.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.ver
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Pingresp:
	case packets.Disconnect:
		if n > 0 {
			_ = pk.DisconnectDecode(body)
		}
		return pk, errDisconnected
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// expect reads the next packet and fails unless it has type typ.
func (c *rawClient) expect(typ byte) packets.Packet {
	c.t.Helper()
	pk, err := c.read(3 * time.Second)
	if err != nil {
		c.t.Fatalf("want packet type %d: %v", typ, err)
	}
	if pk.FixedHeader.Type != typ {
		c.t.Fatalf("got packet type %d (id %d, reason 0x%02x), want %d", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, typ)
	}
	return pk
}

func (c *rawClient) expectNothing(d time.Duration) {
	c.t.Helper()
	if pk, err := c.read(d); err == nil {
		c.t.Fatalf("unexpected packet type %d id %d", pk.FixedHeader.Type, pk.PacketID)
	}
}

// expectClosed fails unless the server closes the connection within d
// (a DISCONNECT before the close is fine).
func (c *rawClient) expectClosed(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		pk, err := c.read(time.Until(deadline))
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			c.t.Fatalf("connection still open after %s", d)
		case err != nil && !errors.Is(err, errDisconnected):
			return
		case err == nil && time.Now().After(deadline):
			c.t.Fatalf("connection still open after %s (last packet type %d)", d, pk.FixedHeader.Type)
		}
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
