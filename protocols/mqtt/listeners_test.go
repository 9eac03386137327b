package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		o    Options
		want string // substring of the error; "" for valid
	}{
		{"defaults", Options{}, ""},
		{"bad tcp", Options{TCP: "1883"}, "mqtt.tcp"},
		{"all off", Options{TCP: Off}, "every MQTT listener is off"},
		{"tls without cert", Options{TLS: ":8883"}, "mqtt.tls_cert_file"},
		{"wss without cert", Options{WebSocket: ":8083", WebSocketTLS: true}, "mqtt.tls_cert_file"},
		{"cert without key", Options{TLSCertFile: "c.pem"}, "mqtt.tls_key_file"},
		{"client auth without CA", Options{TLSCertFile: "c", TLSKeyFile: "k", TLSClientAuth: "require"}, "mqtt.tls_client_auth"},
		{"bad client auth", Options{TLSCertFile: "c", TLSKeyFile: "k", TLSClientCAFile: "ca", TLSClientAuth: "maybe"}, "mqtt.tls_client_auth"},
		{"bad tls version", Options{TLSMinVersion: "1.1"}, "mqtt.tls_min_version"},
		{"bad websocket", Options{WebSocket: "8083"}, "mqtt.websocket"},
		{"negative rate", Options{MaxRate: -1}, "mqtt.max_rate"},
		{"negative burst", Options{MaxRate: 1, MaxBurst: -1}, "mqtt.max_burst"},
		{"negative connect timeout", Options{ConnectTimeout: -time.Second}, "mqtt.connect_timeout"},
		{"receive maximum", Options{ReceiveMaximum: 70000}, "mqtt.receive_maximum"},
		{"pending writes", Options{MaxPendingWrites: -1}, "mqtt.max_pending_writes"},
		{"tls on with cert", Options{TLSCertFile: "c", TLSKeyFile: "k"}, ""},
		{"websocket only", Options{TCP: Off, WebSocket: ":8083"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.SetDefaults()
			err := c.o.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %s", err, c.want)
			}
		})
	}
}

func TestOptionsDefaults(t *testing.T) {
	var o Options
	o.SetDefaults()
	if o.TCP != ":1883" || o.TLS != Off || o.WebSocket != Off || o.ConnectTimeout != 10*time.Second || o.MaxRate != 0 {
		t.Errorf("defaults %+v", o)
	}
	o = Options{TLSCertFile: "c", TLSKeyFile: "k", TLSClientCAFile: "ca", MaxRate: 2.5}
	o.SetDefaults()
	if o.TLS != ":8883" || o.TLSClientAuth != ClientAuthOptional || o.MaxBurst != 3 {
		t.Errorf("defaults with cert and rate %+v", o)
	}
}

func TestNewRefusesBadCertificateFiles(t *testing.T) {
	p := newPKI(t)
	o := p.options(ClientAuthOptional)
	o.TLSKeyFile = p.caFile // not a key
	if _, err := New(o, &heldBuffer{}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "mqtt.tls_cert_file") {
		t.Errorf("bad key: %v", err)
	}
	o = p.options(ClientAuthOptional)
	o.TLSClientCAFile = p.keyFile // no certificate in it
	if _, err := New(o, &heldBuffer{}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "mqtt.tls_client_ca_file") {
		t.Errorf("bad CA file: %v", err)
	}
}

func TestAddresses(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	if _, err := s.TLSAddr(); !errors.Is(err, ErrListenerOff) {
		t.Errorf("TLSAddr with tls off: %v", err)
	}
	if _, err := s.WebSocketAddr(); !errors.Is(err, ErrListenerOff) {
		t.Errorf("WebSocketAddr with websocket off: %v", err)
	}
	s2, err := New(Options{TCP: "127.0.0.1:0"}, &heldBuffer{}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Addr(); !errors.Is(err, ErrNotStarted) {
		t.Errorf("Addr before Start: %v", err)
	}
	s2.Close(context.Background())
}

// TestStartFailsCleanly: a listener that cannot bind fails Start with its
// key named and leaves no other listener bound.
func TestStartFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	s, err := New(Options{TCP: freeAddr, WebSocket: busy.Addr().String()}, &heldBuffer{}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "mqtt.websocket") {
		t.Fatalf("Start: %v, want an error naming mqtt.websocket", err)
	}
	l, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the TCP listener stayed bound after Start failed: %v", err)
	}
	l.Close()
	s.Close(context.Background())
}

// dialWS opens an MQTT over WebSocket connection as a net.Conn.
func dialWS(t testing.TB, url string, d *websocket.Dialer) net.Conn {
	t.Helper()
	if d == nil {
		d = &websocket.Dialer{HandshakeTimeout: 3 * time.Second}
	}
	d.Subprotocols = []string{"mqtt"}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("websocket dial %s: %v", url, err)
	}
	if resp.Header.Get("Sec-WebSocket-Protocol") != "mqtt" {
		t.Errorf("subprotocol %q, want mqtt", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	return &wsConn{Conn: ws.UnderlyingConn(), ws: ws}
}

// TestWebSocket publishes over ws:// and wss:// (with a client
// certificate) and gets durable acks, for both protocol versions.
func TestWebSocket(t *testing.T) {
	p := newPKI(t)
	truck1 := p.ca.issue(t, certSpec{cn: "truck-1"})
	opts := p.options(ClientAuthOptional)
	opts.TLS = Off
	opts.TCP = Off
	opts.WebSocket = "127.0.0.1:0"
	wss := startWith(t, Options{TCP: Off, WebSocket: "127.0.0.1:0"}, &heldBuffer{}, nil, nil)
	opts.WebSocketTLS = true
	reg := fakeRegistry{passwords: map[string]string{"truck-1": "s3cret"}}
	secure := startWith(t, opts, &heldBuffer{}, reg, ownTopics{})

	plainAddr, err := wss.WebSocketAddr()
	if err != nil {
		t.Fatal(err)
	}
	secureAddr, _ := secure.WebSocketAddr()
	for _, ver := range []byte{4, 5} {
		for _, c := range []struct {
			name string
			s    *Server
			url  string
			d    *websocket.Dialer
			o    connectOpts
		}{
			{"ws", wss, "ws://" + plainAddr + "/mqtt", nil, connectOpts{clientID: "truck-1"}},
			{"ws other path", wss, "ws://" + plainAddr + "/", nil, connectOpts{clientID: "truck-1"}},
			{"wss client certificate", secure, "wss://" + secureAddr + "/mqtt", &websocket.Dialer{TLSClientConfig: p.clientConfig(&truck1)}, connectOpts{clientID: "truck-1"}},
			{"wss password", secure, "wss://" + secureAddr + "/mqtt", &websocket.Dialer{TLSClientConfig: p.clientConfig(nil)}, connectOpts{clientID: "truck-1", user: "truck-1", pass: "s3cret"}},
		} {
			t.Run(fmt.Sprintf("v%d/%s", ver, c.name), func(t *testing.T) {
				buf := c.s.buf.(*heldBuffer)
				cl := newRawClient(t, dialWS(t, c.url, c.d), ver)
				c.o.ver = ver
				if code := cl.connect(c.o); code != 0 {
					t.Fatalf("CONNACK 0x%02x", code)
				}
				before := buf.appended()
				for i := uint16(1); i <= 20; i++ {
					cl.publish(1, i, "devices/truck-1/position", strings.Repeat("x", int(i)*100))
				}
				waitFor(t, func() bool { return buf.appended() == before+20 })
				buf.release(nil)
				for i := uint16(1); i <= 20; i++ {
					if ack := cl.expect(packets.Puback); ack.PacketID != i {
						t.Fatalf("PUBACK %d, want %d", ack.PacketID, i)
					}
				}
			})
		}
	}
	// A text message is not MQTT: the connection closes.
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+plainAddr+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte("hello"))
	ws.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Error("text message did not close the connection")
	}
	// Plain HTTP gets an HTTP error, not a hang.
	resp, err := http.Get("http://" + plainAddr + "/mqtt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET: %s", resp.Status)
	}
}

// TestWebSocketLargeMessages: messages several times the WebSocket read
// and write buffers go through whole, both ways, and many in a row (the
// write buffer is borrowed from a pool for each message).
func TestWebSocketLargeMessages(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{TCP: Off, WebSocket: "127.0.0.1:0"}, buf, nil, nil)
	addr, err := s.WebSocketAddr()
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + addr + "/mqtt"
	sub := newRawClient(t, dialWS(t, url, nil), 4)
	if code := sub.connect(connectOpts{ver: 4, clientID: "dashboard"}); code != 0 {
		t.Fatalf("subscriber CONNACK 0x%02x", code)
	}
	sub.subscribe(1, packets.Subscription{Filter: "devices/+/image", Qos: 1})
	pub := newRawClient(t, dialWS(t, url, nil), 5)
	if code := pub.connect(connectOpts{ver: 5, clientID: "truck-1"}); code != 0 {
		t.Fatalf("publisher CONNACK 0x%02x", code)
	}
	for i := uint16(1); i <= 5; i++ {
		payload := strings.Repeat(string(rune('a'+i)), int(i)*max(wsReadBufferSize, wsWriteBufferSize)+int(i))
		pub.publish(1, i, "devices/truck-1/image", payload)
		waitFor(t, func() bool { return buf.appended() == int(i) })
		buf.release(nil)
		if ack := pub.expect(packets.Puback); ack.PacketID != i {
			t.Fatalf("PUBACK %d, want %d", ack.PacketID, i)
		}
		got := sub.expect(packets.Publish)
		if got.TopicName != "devices/truck-1/image" || string(got.Payload) != payload {
			t.Fatalf("message %d: subscriber got %d bytes on %q, want %d", i, len(got.Payload), got.TopicName, len(payload))
		}
		sub.puback(got.PacketID, 0)
	}
}

// TestConnectTimeout: a connection that sends no CONNECT (or only part of
// one, or stalls in the TLS handshake or WebSocket upgrade) is closed after
// connect_timeout, on every listener.
func TestConnectTimeout(t *testing.T) {
	p := newPKI(t)
	opts := p.options("")
	opts.WebSocket = "127.0.0.1:0"
	opts.ConnectTimeout = 300 * time.Millisecond
	s := startWith(t, opts, &heldBuffer{}, nil, nil)
	tcpAddr, _ := s.Addr()
	tlsAddr, _ := s.TLSAddr()
	wsAddr, _ := s.WebSocketAddr()

	cases := []struct {
		name  string
		addr  string
		bytes []byte
	}{
		{"tcp silent", tcpAddr, nil},
		{"tcp partial CONNECT", tcpAddr, []byte{0x10, 0x10, 0, 4, 'M'}},
		{"tls silent (no handshake)", tlsAddr, nil},
		{"tls partial hello", tlsAddr, []byte{0x16, 0x03, 0x01}},
		{"websocket silent (no upgrade)", wsAddr, nil},
		{"websocket partial request", wsAddr, []byte("GET /mqtt HTTP/1.1\r\nHost: x\r\n")},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			start := time.Now()
			conn.Write(c.bytes)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 512)
			for {
				if _, err := conn.Read(b); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Errorf("%s: still open after 5s", c.name)
					} else if el := time.Since(start); el < 250*time.Millisecond {
						t.Errorf("%s: closed after %s, before connect_timeout", c.name, el)
					}
					return
				}
			}
		}()
	}
	// An upgraded WebSocket that sends no CONNECT is closed too.
	wg.Add(1)
	go func() {
		defer wg.Done()
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+wsAddr+"/mqtt", nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer ws.Close()
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := ws.ReadMessage(); err == nil {
			t.Error("websocket without CONNECT got a message")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Error("websocket without CONNECT still open after 5s")
		}
	}()
	wg.Wait()

	// A client that connects in time is not affected by the timeout.
	c := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1", keepalive: 10})
	time.Sleep(2 * opts.ConnectTimeout)
	c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, (*packets.Packet).PingreqEncode)
	c.expect(packets.Pingresp)
}

// TestKeepAliveEnforced: a client silent for 1.5 times its keep-alive is
// disconnected; one that pings stays.
func TestKeepAliveEnforced(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			silent := mustDial(t, s, connectOpts{ver: ver, clientID: fmt.Sprintf("silent-%d", ver), keepalive: 1})
			pinger := mustDial(t, s, connectOpts{ver: ver, clientID: fmt.Sprintf("pinger-%d", ver), keepalive: 1})
			start := time.Now()
			for time.Since(start) < 2500*time.Millisecond {
				pinger.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, (*packets.Packet).PingreqEncode)
				pinger.expect(packets.Pingresp)
				time.Sleep(500 * time.Millisecond)
			}
			silent.expectClosed(time.Second)
			if el := time.Since(start); el < 1400*time.Millisecond {
				t.Errorf("silent client closed after %s, before 1.5 × keep-alive", el)
			}
		})
	}
}

// TestMaxConnections: past max_connections a client gets "server busy"
// (3.1.1: server unavailable); a slot frees when a client leaves,
// including one refused during authentication; concurrent connects never
// overshoot.
func TestMaxConnections(t *testing.T) {
	reg := fakeRegistry{passwords: map[string]string{}}
	for i := range 20 {
		reg.passwords[fmt.Sprintf("truck-%d", i)] = "pw"
	}
	s := startWith(t, Options{MaxConnections: 3}, &heldBuffer{}, reg, ownTopics{})
	connect := func(i int, ver byte, pass string) (*rawClient, byte) {
		c := newRawClient(t, dialTCP(t, s), ver)
		id := fmt.Sprintf("truck-%d", i)
		return c, c.connect(connectOpts{ver: ver, clientID: id, user: id, pass: pass})
	}
	a, _ := connect(0, 5, "pw")
	connect(1, 4, "pw")
	connect(2, 5, "pw")
	if _, code := connect(3, 5, "pw"); code != packets.ErrServerBusy.Code {
		t.Fatalf("4th connection: CONNACK 0x%02x, want 0x89", code)
	}
	if _, code := connect(3, 4, "pw"); code != 0x03 {
		t.Fatalf("4th connection 3.1.1: CONNACK 0x%02x, want 0x03", code)
	}
	a.conn.Close()
	waitFor(t, func() bool { return s.admitted.Load() == 2 })
	// A refused authentication gives its slot back.
	if _, code := connect(4, 5, "wrong"); code != packets.ErrBadUsernameOrPassword.Code {
		t.Fatalf("wrong password: 0x%02x", code)
	}
	waitFor(t, func() bool { return s.admitted.Load() == 2 })
	if _, code := connect(5, 5, "pw"); code != 0 {
		t.Fatalf("connection after one left: CONNACK 0x%02x", code)
	}
	// 10 at once against a full server: none gets in.
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for i := 6; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, code := connect(i, 5, "pw"); code == 0 {
				mu.Lock()
				accepted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if accepted != 0 || s.Stats().Connections != 3 {
		t.Fatalf("%d accepted past the limit; %d connected", accepted, s.Stats().Connections)
	}
	if s.Stats().RefusedBusy < 12 {
		t.Errorf("refusals not counted: %+v", s.Stats())
	}
}

// statusLog records SetStatus calls.
type statusLog struct {
	mu     sync.Mutex
	online map[string]bool
}

func (l *statusLog) SetStatus(_ context.Context, device string, online bool, _ time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.online == nil {
		l.online = map[string]bool{}
	}
	l.online[device] = online
	return nil
}

func (l *statusLog) get(device string) (online, seen bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	online, seen = l.online[device]
	return online, seen
}

// TestDecoderPanicClosesOnlyThatConnection: mochi v2.7.9 panics decoding
// an MQTT 5 SUBSCRIBE whose last filter has no options byte. The gateway
// survives: that connection closes, its session ends (offline, forgotten),
// everyone else carries on.
func TestDecoderPanicClosesOnlyThatConnection(t *testing.T) {
	status := &statusLog{}
	s, err := New(Options{TCP: "127.0.0.1:0"}, &heldBuffer{}, nil, nil, status, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	bystander := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-1"})
	bad := mustDial(t, s, connectOpts{ver: 5, clientID: "truck-2"})
	bad.subscribe(1, packets.Subscription{Filter: "devices/truck-2/commands", Qos: 1})
	if online, _ := status.get("truck-2"); !online {
		t.Fatal("truck-2 not online")
	}
	bad.conn.Write([]byte{0x82, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, 'a'})
	bad.expectClosed(3 * time.Second)
	waitFor(t, func() bool { online, seen := status.get("truck-2"); return seen && !online })
	if s.Stats().Panics != 1 {
		t.Errorf("panics %d, want 1", s.Stats().Panics)
	}
	// The session is forgotten right after the offline status.
	waitFor(t, func() bool {
		_, known := s.mochi.Clients.Get("truck-2")
		return !known && len(s.mochi.Topics.Subscribers("devices/truck-2/commands").Subscriptions) == 0
	})
	bystander.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, (*packets.Packet).PingreqEncode)
	bystander.expect(packets.Pingresp)
	mustDial(t, s, connectOpts{ver: 5, clientID: "truck-2"})
}

// flakyListener fails its first accepts the way a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails > 0
	l.fails--
	l.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("accept tcp: %w", errors.New("too many open files"))
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsAreRetried: a failing accept (EMFILE) does not stop the
// listener, unlike mochi's own.
func TestAcceptErrorsAreRetried(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &mochiListener{id: "flaky", ln: &flakyListener{Listener: &trackedListener{Listener: raw, s: s, handoff: true}, fails: 3}, s: s}
	if err := s.mochi.AddListener(l); err != nil {
		t.Fatal(err)
	}
	s.mochi.Listeners.Serve("flaky", s.mochi.EstablishConnection)
	conn, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if code := newRawClient(t, conn, 4).connect(connectOpts{ver: 4, clientID: "after-emfile"}); code != 0 {
		t.Fatalf("CONNACK 0x%02x after accept errors", code)
	}
	if got := s.Stats().AcceptErrors; got != 3 {
		t.Errorf("accept errors %d, want 3", got)
	}
}

// TestTooLargePacketClosesConnection: a packet over max_packet_size closes
// that connection and is counted.
func TestTooLargePacketClosesConnection(t *testing.T) {
	buf := &heldBuffer{}
	s := startWith(t, Options{MaxPacketSize: 1024}, buf, nil, nil)
	c := mustDial(t, s, connectOpts{ver: 4, clientID: "truck-1"})
	c.publish(1, 1, "devices/truck-1/position", strings.Repeat("x", 2000))
	c.expectClosed(3 * time.Second)
	waitFor(t, func() bool { return s.Stats().TooLargeDrops == 1 })
	if buf.appended() != 0 {
		t.Error("an oversized message was stored")
	}
}

// TestCloseWhileClientsLeave: closing the server while many clients
// disconnect at the same moment returns (mochi's own listener close could
// deadlock on its clients map).
func TestCloseWhileClientsLeave(t *testing.T) {
	for round := range 5 {
		s, err := New(Options{TCP: "127.0.0.1:0"}, &heldBuffer{}, nil, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		var clients []*rawClient
		for i := range 200 {
			clients = append(clients, mustDial(t, s, connectOpts{ver: 4, clientID: fmt.Sprintf("c-%d-%d", round, i)}))
		}
		go func() {
			for _, c := range clients {
				c.conn.Close()
			}
		}()
		done := make(chan error, 1)
		go func() { done <- s.Close(context.Background()) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close hung while clients were leaving", round)
		}
	}
}

// TestListenerCloseAvoidsMochiCloseClients: the listener disconnects its
// own clients instead of calling mochi's closeClients, whose nested read
// lock deadlocks against a client being deleted at the same moment.
func TestListenerCloseAvoidsMochiCloseClients(t *testing.T) {
	s := startWith(t, Options{}, &heldBuffer{}, nil, nil)
	a := mustDial(t, s, connectOpts{ver: 5, clientID: "a"})
	b := mustDial(t, s, connectOpts{ver: 4, clientID: "b"})
	l := &mochiListener{id: listenerTCP, ln: s.listeners[listenerTCP], s: s}
	l.Close(func(string) { t.Error("mochi's closeClients was called") })
	if pk, err := a.read(3 * time.Second); !errors.Is(err, errDisconnected) || pk.ReasonCode != packets.ErrServerShuttingDown.Code {
		t.Errorf("MQTT 5 client: %v, reason 0x%02x; want DISCONNECT 0x8b", err, pk.ReasonCode)
	}
	b.expectClosed(3 * time.Second)
}
