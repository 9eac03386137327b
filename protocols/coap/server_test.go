package coap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/iotgw/iotgw/gateway"
)

func TestConfirmableAckedOnlyAfterDurableAppend(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, Options{}, buf, nil)
	c := dialRaw(t, s)
	c.send(withPayload(msg(message.Confirmable, codes.POST, 0x1234, "tk1", "/devices/sensor-1/climate"), cfJSON, `{"t":21.5}`))
	waitFor(t, func() bool { return buf.appended() == 1 })
	c.expectNothing(100 * time.Millisecond)
	buf.release(nil)
	m, _ := c.expect(2 * time.Second)
	if m.Type != message.Acknowledgement || m.MessageID != 0x1234 || string(m.Token) != "tk1" || m.Code != codes.Changed {
		t.Fatalf("got %v %v mid %x token %q, want ACK 2.04 mid 1234 token tk1", m.Type, m.Code, m.MessageID, m.Token)
	}
	rec := buf.record(t, 0)
	want := gateway.Record{Device: "sensor-1", Stream: "climate", Protocol: "coap", Topic: "devices/sensor-1/climate",
		QoS: 1, ContentType: "application/json", Payload: []byte(`{"t":21.5}`)}
	if rec.Device != want.Device || rec.Stream != want.Stream || rec.Protocol != want.Protocol || rec.Topic != want.Topic ||
		rec.QoS != want.QoS || rec.ContentType != want.ContentType || string(rec.Payload) != string(want.Payload) || rec.ID == "" {
		t.Fatalf("record = %+v", rec)
	}
	if st := s.Stats(); st.Acked != 1 || st.Requests != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestNonConfirmable(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, Options{}, buf, nil)
	c := dialRaw(t, s)
	c.send(withPayload(msg(message.NonConfirmable, codes.PUT, 7, "n", "/devices/sensor-1/climate/raw"), cfOctets, "\x00\x01"))
	waitFor(t, func() bool { return buf.appended() == 1 })
	c.expectNothing(50 * time.Millisecond)
	buf.release(nil)
	m, _ := c.expect(2 * time.Second)
	if m.Type != message.NonConfirmable || m.Code != codes.Changed || string(m.Token) != "n" {
		t.Fatalf("got %v %v token %q, want NON 2.04", m.Type, m.Code, m.Token)
	}
	rec := buf.record(t, 0)
	if rec.QoS != 0 || rec.Stream != "climate" || rec.Topic != "devices/sensor-1/climate/raw" || rec.ContentType != "application/octet-stream" {
		t.Fatalf("record = %+v", rec)
	}

	// No-Response (RFC 7967) for 2.xx: stored, not answered.
	c.send(withPayload(msg(message.NonConfirmable, codes.POST, 8, "q", "/devices/sensor-1/climate", uintOption(message.NoResponse, noResponse2xx)), cfJSON, `1`))
	waitFor(t, func() bool { return buf.appended() == 2 })
	buf.release(nil)
	c.expectNothing(100 * time.Millisecond)
}

// TestRetransmissionsStoredOnce: the same confirmable datagram sent again
// while its append is pending, and again after the answer, is stored once
// and answered with the same ACK.
func TestRetransmissionsStoredOnce(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, Options{}, buf, nil)
	c := dialRaw(t, s)
	b := c.send(withPayload(msg(message.Confirmable, codes.POST, 99, "tok", "/devices/m-1/energy"), cfJSON, `{"kwh":1}`))
	waitFor(t, func() bool { return buf.appended() == 1 })
	c.sendRaw(b)
	c.expectNothing(100 * time.Millisecond)
	buf.release(nil)
	first, _ := c.expect(2 * time.Second)
	c.sendRaw(b)
	c.sendRaw(b)
	for range 2 {
		again, _ := c.expect(2 * time.Second)
		if again.MessageID != first.MessageID || again.Code != first.Code || string(again.Token) != string(first.Token) || again.Type != message.Acknowledgement {
			t.Fatalf("retransmission answered %v %v mid %d, first answer %v %v mid %d", again.Type, again.Code, again.MessageID, first.Type, first.Code, first.MessageID)
		}
	}
	if n := buf.appended(); n != 1 {
		t.Fatalf("stored %d times, want once", n)
	}
	// A smaller datagram reusing the message id (spoofed, say) does not
	// get the larger stored answer: no amplification.
	c.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 99})
	c.expectNothing(100 * time.Millisecond)
	if st := s.Stats(); st.Duplicates != 4 {
		t.Errorf("duplicates = %d, want 4", st.Duplicates)
	}
	// A new message id from the same endpoint is a new message.
	c.send(withPayload(msg(message.Confirmable, codes.POST, 100, "tok", "/devices/m-1/energy"), cfJSON, `{"kwh":1}`))
	waitFor(t, func() bool { return buf.appended() == 2 })
	buf.release(nil)
}

// TestOrderPerEndpoint: non-confirmable messages sent back to back from
// one endpoint are stored in the order sent.
func TestOrderPerEndpoint(t *testing.T) {
	buf := &heldBuffer{auto: true}
	c := dialRaw(t, startServer(t, Options{}, buf, nil))
	const n = 50
	for i := range n {
		c.send(withPayload(msg(message.NonConfirmable, codes.POST, uint16(1000+i), "", "/devices/d1/s"), cfJSON, fmt.Sprint(i)))
	}
	waitFor(t, func() bool { return buf.appended() == n })
	for i := range n {
		if got := string(buf.record(t, i).Payload); got != fmt.Sprint(i) {
			t.Fatalf("record %d has payload %s", i, got)
		}
	}
}

func TestBufferFullIsServiceUnavailableWithMaxAge(t *testing.T) {
	buf := &heldBuffer{}
	buf.setFull(true)
	s := startServer(t, Options{BusyMaxAge: 7 * time.Second}, buf, nil)
	c := dialRaw(t, s)
	req := c.send(withPayload(msg(message.Confirmable, codes.POST, 5, "x", "/devices/d1/s"), cfJSON, `{"a":1}`))
	m, n := c.expect(2 * time.Second)
	if m.Code != codes.ServiceUnavailable || m.Type != message.Acknowledgement || m.MessageID != 5 {
		t.Fatalf("got %v %v, want ACK 5.03", m.Type, m.Code)
	}
	if age, ok := optionUint(m.Options, message.MaxAge); !ok || age != 7 {
		t.Fatalf("Max-Age = %d %v, want 7", age, ok)
	}
	if n > len(req) {
		t.Fatalf("answer of %d bytes to a request of %d", n, len(req))
	}
	// Once there is room, the retransmission of the same message is stored.
	buf.setFull(false)
	buf.setAuto(true)
	c.sendRaw(req)
	if m, _ := c.expect(2 * time.Second); m.Code != codes.Changed {
		t.Fatalf("after the buffer has room: %v, want 2.04", m.Code)
	}
	if st := s.Stats(); st.RefusedFull != 1 || st.Acked != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestFailedAppendIsNotAcked(t *testing.T) {
	buf := &heldBuffer{}
	s := startServer(t, Options{}, buf, nil)
	c := dialRaw(t, s)
	c.send(withPayload(msg(message.Confirmable, codes.POST, 1, "x", "/devices/d1/s"), cfJSON, `1`))
	waitFor(t, func() bool { return buf.appended() == 1 })
	buf.release(errors.New("disk on fire"))
	if m, _ := c.expect(2 * time.Second); m.Code != codes.InternalServerError {
		t.Fatalf("got %v, want 5.00", m.Code)
	}
	if st := s.Stats(); st.Acked != 0 || st.AppendErrors != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestRequestErrors: each refusal has its code, a short diagnostic, is
// never larger than the request on plain UDP and stores nothing.
func TestRequestErrors(t *testing.T) {
	auth := &fakeAuth{passwords: map[string]string{"d1": "pw1"}}
	cases := []struct {
		name string
		auth bool
		m    message.Message
		code codes.Code
	}{
		{"unknown path", false, withPayload(msg(message.Confirmable, codes.POST, 1, "t", "/things/d1/s"), cfJSON, `1`), codes.NotFound},
		{"no stream", false, withPayload(msg(message.Confirmable, codes.POST, 2, "t", "/devices/d1"), cfJSON, `1`), codes.NotFound},
		{"bad device id", false, withPayload(msg(message.Confirmable, codes.POST, 3, "t", "/devices/-x/s"), cfJSON, `1`), codes.NotFound},
		{"no path", false, withPayload(msg(message.Confirmable, codes.POST, 4, "t", ""), cfJSON, `1`), codes.NotFound},
		{"GET a stream", false, msg(message.Confirmable, codes.GET, 5, "t", "/devices/d1/s"), codes.MethodNotAllowed},
		{"DELETE", false, msg(message.Confirmable, codes.DELETE, 6, "t", "/devices/d1/s"), codes.MethodNotAllowed},
		{"POST to commands", false, withPayload(msg(message.Confirmable, codes.POST, 7, "t", "/devices/d1/commands"), cfJSON, `1`), codes.MethodNotAllowed},
		{"GET commands without observe", false, msg(message.Confirmable, codes.GET, 8, "t", "/devices/d1/commands"), codes.BadRequest},
		{"unsupported content format", false, withPayload(msg(message.Confirmable, codes.POST, 9, "t", "/devices/d1/s"), 41, `<a/>`), codes.UnsupportedMediaType},
		{"invalid JSON", false, withPayload(msg(message.Confirmable, codes.POST, 10, "t", "/devices/d1/s"), cfJSON, `{"a":`), codes.BadRequest},
		{"SenML not an array", false, withPayload(msg(message.Confirmable, codes.POST, 11, "t", "/devices/d1/s"), cfSenMLJSON, `{"n":"x"}`), codes.BadRequest},
		{"invalid CBOR", false, withPayload(msg(message.Confirmable, codes.POST, 12, "t", "/devices/d1/s"), cfCBOR, "\x1f"), codes.BadRequest},
		{"unknown critical option", false, withPayload(msg(message.Confirmable, codes.POST, 13, "t", "/devices/d1/s", message.Option{ID: 9, Value: []byte{1}}), cfJSON, `1`), codes.BadOption},
		{"proxy", false, withPayload(msg(message.Confirmable, codes.POST, 14, "t", "/devices/d1/s", message.Option{ID: message.ProxyURI, Value: []byte("coap://x/")}), cfJSON, `1`), codes.ProxyingNotSupported},
		{"too large", false, withPayload(msg(message.Confirmable, codes.POST, 15, "t", "/devices/d1/s"), cfOctets, strings.Repeat("x", 1025)), codes.RequestEntityTooLarge},
		{"no credentials", true, withPayload(msg(message.Confirmable, codes.POST, 16, "t", "/devices/d1/s"), cfJSON, `1`), codes.Unauthorized},
		{"wrong password", true, withPayload(msg(message.Confirmable, codes.POST, 17, "t", "/devices/d1/s", query("auth=nope")), cfJSON, `1`), codes.Unauthorized},
		{"unknown device", true, withPayload(msg(message.Confirmable, codes.POST, 18, "t", "/devices/d9/s", query("auth=pw1")), cfJSON, `1`), codes.Unauthorized},
		{"tiny request", true, msg(message.Confirmable, codes.POST, 19, "", "/devices/d/s"), codes.Unauthorized},
	}
	buf := &heldBuffer{auto: true}
	open := dialRaw(t, startServer(t, Options{MaxPayload: 1024}, buf, nil))
	closed := dialRaw(t, startServer(t, Options{MaxPayload: 1024}, buf, auth))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := open
			if tc.auth {
				c = closed
			}
			req := c.send(tc.m)
			m, n := c.expect(2 * time.Second)
			if m.Code != tc.code || m.Type != message.Acknowledgement || m.MessageID != tc.m.MessageID {
				t.Fatalf("got %v %v mid %d (%q), want ACK %v", m.Type, m.Code, m.MessageID, m.Payload, tc.code)
			}
			if n > len(req) {
				t.Fatalf("answer of %d bytes to a request of %d: amplification", n, len(req))
			}
			if tc.code == codes.RequestEntityTooLarge {
				if v, ok := optionUint(m.Options, message.Size1); !ok || v != 1024 {
					t.Fatalf("Size1 = %d %v, want 1024", v, ok)
				}
			}
		})
	}
	if n := buf.appended(); n != 0 {
		t.Fatalf("%d refused requests were stored", n)
	}
	// The right password is accepted.
	closed.send(withPayload(msg(message.Confirmable, codes.POST, 100, "t", "/devices/d1/s", query("auth=pw1")), cfJSON, `1`))
	if m, _ := closed.expect(2 * time.Second); m.Code != codes.Changed {
		t.Fatalf("right password: %v %q", m.Code, m.Payload)
	}
}

func TestRegistryDownIsServiceUnavailable(t *testing.T) {
	auth := &fakeAuth{passwords: map[string]string{"d1": "pw1"}, down: true}
	c := dialRaw(t, startServer(t, Options{}, &heldBuffer{}, auth))
	c.send(withPayload(msg(message.Confirmable, codes.POST, 1, "t", "/devices/d1/s", query("auth=pw1")), cfJSON, `1`))
	if m, _ := c.expect(2 * time.Second); m.Code != codes.ServiceUnavailable {
		t.Fatalf("got %v, want 5.03", m.Code)
	}
}

func TestPingAndStrayMessages(t *testing.T) {
	buf := &heldBuffer{auto: true}
	c := dialRaw(t, startServer(t, Options{}, buf, nil))
	c.send(message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: 42})
	if m, _ := c.expect(2 * time.Second); m.Type != message.Reset || m.MessageID != 42 {
		t.Fatalf("ping answered %v mid %d, want RST 42", m.Type, m.MessageID)
	}
	// A malformed confirmable message is rejected with Reset.
	c.sendRaw([]byte{0x40, 0x02, 0x00, 0x2b, 0xff})
	if m, _ := c.expect(2 * time.Second); m.Type != message.Reset || m.MessageID != 43 {
		t.Fatalf("malformed CON answered %v mid %d, want RST 43", m.Type, m.MessageID)
	}
	// A stray ACK and a NON response are ignored.
	c.send(message.Message{Type: message.Acknowledgement, Code: codes.Empty, MessageID: 44})
	c.send(message.Message{Type: message.NonConfirmable, Code: codes.Content, MessageID: 45})
	c.expectNothing(100 * time.Millisecond)
}

func TestCloseWaitsForPendingAnswers(t *testing.T) {
	buf := &heldBuffer{}
	s, err := New(Options{UDP: "127.0.0.1:0"}, buf, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, s)
	c.send(withPayload(msg(message.Confirmable, codes.POST, 1, "t", "/devices/d1/s"), cfJSON, `1`))
	waitFor(t, func() bool { return buf.appended() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- s.Close(context.Background()) }()
	select {
	case <-closed:
		t.Fatal("Close returned with an answer pending")
	case <-time.After(100 * time.Millisecond):
	}
	// New requests are refused meanwhile.
	c.send(withPayload(msg(message.Confirmable, codes.POST, 2, "t", "/devices/d1/s"), cfJSON, `1`))
	if m, _ := c.expect(2 * time.Second); m.Code != codes.ServiceUnavailable {
		t.Fatalf("request while closing: %v, want 5.03", m.Code)
	}
	buf.release(nil)
	if m, _ := c.expect(2 * time.Second); m.Code != codes.Changed || m.MessageID != 1 {
		t.Fatalf("pending answer: %v mid %d", m.Code, m.MessageID)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Addr(); err == nil {
		// Addr still reports the old address; what matters is that the
		// socket is closed.
		c.send(withPayload(msg(message.Confirmable, codes.POST, 3, "t", "/devices/d1/s"), cfJSON, `1`))
		c.expectNothing(100 * time.Millisecond)
	}
}

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		o    Options
		want string // substring of the error; "" for valid
	}{
		{"defaults", Options{}, ""},
		{"all listeners", Options{DTLS: ":5684", TCP: ":5683", TLS: ":5685", TLSCertFile: "c", TLSKeyFile: "k"}, ""},
		{"bad udp", Options{UDP: "5683"}, "coap.udp"},
		{"bad dtls", Options{DTLS: "x"}, "coap.dtls"},
		{"cert without key", Options{DTLSCertFile: "c"}, "coap.dtls_cert_file"},
		{"client CA without cert", Options{DTLSClientCAFile: "ca"}, "coap.dtls_client_ca_file"},
		{"tls without cert", Options{TLS: ":5684"}, "coap.tls"},
		{"tiny payload", Options{MaxPayload: 8}, "coap.max_payload"},
		{"huge payload", Options{MaxPayload: 1 << 30}, "coap.max_payload"},
		{"max age", Options{BusyMaxAge: time.Millisecond}, "coap.busy_max_age"},
		{"dedup", Options{DedupEntries: -1}, "coap.dedup_entries"},
		{"inflight", Options{MaxInFlight: -1}, "coap.max_inflight"},
		{"connections", Options{MaxConnections: -1}, "coap.max_connections"},
		{"idle", Options{IdleTimeout: time.Millisecond}, "coap.idle_timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
	var o Options
	o.SetDefaults()
	if o.UDP != ":5683" || o.DTLS != "off" || o.TCP != "off" || o.TLS != "off" || o.MaxPayload != 64<<10 || o.BusyMaxAge != 5*time.Second {
		t.Fatalf("defaults = %+v", o)
	}
}

func ExampleServer() {
	buf := &heldBuffer{auto: true}
	s, err := New(Options{UDP: "127.0.0.1:0"}, buf, nil, nil)
	if err != nil {
		panic(err)
	}
	if err := s.Start(context.Background()); err != nil {
		panic(err)
	}
	defer s.Close(context.Background())
	addr, _ := s.Addr()
	fmt.Println(addr != "")
	// Output: true
}
