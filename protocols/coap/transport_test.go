package coap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/tcp"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/iotgw/iotgw/gateway"
)

func dialUDP(t *testing.T, s *Server, opts ...udp.Option) *udpclient.Conn {
	t.Helper()
	addr, err := s.Addr()
	if err != nil {
		t.Fatal(err)
	}
	c, err := udp.Dial(addr, append([]udp.Option{options.WithErrors(func(error) {})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-c.Done() })
	return c
}

func post(t *testing.T, c interface {
	Post(context.Context, string, message.MediaType, io.ReadSeeker, ...message.Option) (*pool.Message, error)
}, path string, cf message.MediaType, body []byte, opts ...message.Option) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Post(ctx, path, cf, bytes.NewReader(body), opts...)
	if err != nil {
		t.Fatalf("post %s: %v", path, err)
	}
	return resp.Code()
}

func TestBlock1Transfer(t *testing.T) {
	buf := &heldBuffer{auto: true}
	s := startServer(t, Options{MaxPayload: 4096}, buf, nil)
	c := dialUDP(t, s, options.WithBlockwise(true, blockwise.SZX64, 5*time.Second))
	body := []byte(`{"samples":[` + strings.Repeat(`1234567890,`, 200) + `0]}`)
	if code := post(t, c, "/devices/sensor-7/bulk", message.AppJSON, body); code != codes.Changed {
		t.Fatalf("got %v, want 2.04", code)
	}
	if n := buf.appended(); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
	rec := buf.record(t, 0)
	if !bytes.Equal(rec.Payload, body) || rec.Device != "sensor-7" || rec.Stream != "bulk" {
		t.Fatalf("record %s/%s of %d bytes, want %d", rec.Device, rec.Stream, len(rec.Payload), len(body))
	}
	if st := s.Stats(); st.Blocks < uint64(len(body)/64) {
		t.Errorf("blocks = %d", st.Blocks)
	}

	// Past max_payload: 4.13 with Size1, nothing stored. go-coap sends
	// Size1 with the first block, so the server refuses at once.
	big := bytes.Repeat([]byte("x"), 5000)
	if code := post(t, c, "/devices/sensor-7/bulk", message.AppOctets, big); code != codes.RequestEntityTooLarge {
		t.Fatalf("5000 bytes: got %v, want 4.13", code)
	}
	if n := buf.appended(); n != 1 {
		t.Fatalf("%d records after a refused transfer", n)
	}
}

func TestBlock1Raw(t *testing.T) {
	buf := &heldBuffer{auto: true}
	s := startServer(t, Options{MaxPayload: 100}, buf, nil)
	c := dialRaw(t, s)
	block := func(mid uint16, num uint32, more bool, payload string) message.Message {
		v := num<<4 | 1 // SZX 1: 32 bytes
		if more {
			v |= 8
		}
		m := withPayload(msg(message.Confirmable, codes.POST, mid, "b", "/devices/d1/s"), cfOctets, payload)
		m.Options = m.Options.Add(uintOption(message.Block1, v))
		return m
	}
	a, b := strings.Repeat("a", 32), strings.Repeat("b", 32)
	c.send(block(1, 0, true, a))
	if m, _ := c.expect(time.Second); m.Code != codes.Continue {
		t.Fatalf("block 0: %v", m.Code)
	}
	// Block 2 before block 1: 4.08.
	c.send(block(2, 2, true, b))
	if m, _ := c.expect(time.Second); m.Code != codes.RequestEntityIncomplete {
		t.Fatalf("out of order: %v, want 4.08", m.Code)
	}
	// A short non-final block: 4.00.
	c.send(block(3, 0, true, "short"))
	if m, _ := c.expect(time.Second); m.Code != codes.BadRequest {
		t.Fatalf("short block: %v, want 4.00", m.Code)
	}
	// Start over; the body grows past 100 bytes: 4.13 with Size1.
	for i, mid := range []uint16{4, 5, 6} {
		c.send(block(mid, uint32(i), true, a))
		m, _ := c.expect(time.Second)
		if i < 3 && m.Code != codes.Continue {
			t.Fatalf("block %d: %v", i, m.Code)
		}
	}
	c.send(block(7, 3, true, a))
	if m, _ := c.expect(time.Second); m.Code != codes.RequestEntityTooLarge {
		t.Fatalf("past max_payload: %v, want 4.13", m.Code)
	}
	// A complete transfer: the final answer echoes Block1.
	c.send(block(8, 0, true, a))
	c.expect(time.Second)
	c.send(block(9, 1, false, "end"))
	m, _ := c.expect(time.Second)
	if v, ok := optionUint(m.Options, message.Block1); m.Code != codes.Changed || !ok || v != 1<<4|1 {
		t.Fatalf("final block: %v Block1 %x", m.Code, v)
	}
	if rec := buf.record(t, 0); string(rec.Payload) != a+"end" || buf.appended() != 1 {
		t.Fatalf("payload %q (%d records)", rec.Payload, buf.appended())
	}
}

// TestObserveDeliver: a device observes its commands; Deliver sends a
// confirmable notification and returns when the device acknowledged it.
func TestObserveDeliver(t *testing.T) {
	auth := &fakeAuth{passwords: map[string]string{"valve-1": "pw"}}
	s := startServer(t, Options{}, &heldBuffer{auto: true}, auth)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, gateway.Command{Device: "valve-1", Payload: []byte("{}")}); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("deliver without observer: %v", err)
	}
	c := dialUDP(t, s)
	got := make(chan *pool.Message, 4)
	obs, err := c.Observe(ctx, "/devices/valve-1/commands", func(m *pool.Message) {
		b, _ := m.ReadBody()
		cf, _ := m.ContentFormat()
		if len(b) > 0 {
			cm := pool.NewMessage(context.Background())
			cm.SetBody(bytes.NewReader(b))
			cm.SetContentFormat(cf)
			got <- cm
		}
	}, query("auth=pw"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.Stats().Observers == 1 })
	if on, ok := auth.online("valve-1"); !ok || !on {
		t.Fatal("device not recorded online")
	}
	for _, p := range []string{`{"open":true}`, `{"open":false}`} {
		if err := s.Deliver(ctx, gateway.Command{ID: "c1", Device: "valve-1", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			b, _ := m.ReadBody()
			cf, _ := m.ContentFormat()
			if string(b) != p || cf != message.AppJSON {
				t.Fatalf("notification %q %v, want %s JSON", b, cf, p)
			}
		case <-ctx.Done():
			t.Fatal("no notification")
		}
	}
	if st := s.Stats(); st.Notifications != 2 {
		t.Errorf("notifications = %d", st.Notifications)
	}
	big := bytes.Repeat([]byte("x"), 2000)
	if err := s.Deliver(ctx, gateway.Command{Device: "valve-1", Payload: big}); !errors.Is(err, ErrCommandTooLarge) {
		t.Fatalf("2000-byte command: %v", err)
	}
	if err := obs.Cancel(ctx, query("auth=pw")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.Stats().Observers == 0 })
	if on, _ := auth.online("valve-1"); on {
		t.Fatal("device still online after cancelling")
	}

	// Without the password the registration is refused.
	if _, err := c.Observe(ctx, "/devices/valve-1/commands", func(*pool.Message) {}); err == nil {
		waitFor(t, func() bool { return true })
	}
	if s.Stats().Observers != 0 {
		t.Fatal("observer registered without credentials")
	}
}

// TestDeliverReset: a device that answers a notification with Reset loses
// its observation and Deliver says so.
func TestDeliverReset(t *testing.T) {
	s := startServer(t, Options{}, &heldBuffer{auto: true}, nil)
	c := dialRaw(t, s)
	reg := msg(message.Confirmable, codes.GET, 1, "ob", "/devices/d1/commands", uintOption(message.Observe, 0))
	c.send(reg)
	if m, _ := c.expect(time.Second); m.Code != codes.Content {
		t.Fatalf("register: %v", m.Code)
	}
	done := make(chan error, 1)
	go func() { done <- s.Deliver(context.Background(), gateway.Command{Device: "d1", Payload: []byte("x")}) }()
	n, _ := c.expect(time.Second)
	if n.Type != message.Confirmable || string(n.Token) != "ob" || n.Code != codes.Content {
		t.Fatalf("notification %v %v token %q", n.Type, n.Code, n.Token)
	}
	// Retransmitted while unacknowledged.
	again, _ := c.expect(5 * time.Second)
	if again.MessageID != n.MessageID {
		t.Fatalf("retransmission has mid %d, want %d", again.MessageID, n.MessageID)
	}
	c.send(message.Message{Type: message.Reset, Code: codes.Empty, MessageID: n.MessageID})
	if err := <-done; !errors.Is(err, ErrNoAck) || !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("deliver: %v", err)
	}
	if s.Stats().Observers != 0 {
		t.Fatal("observer kept after Reset")
	}

	// Registered again, then silent: at the caller's deadline the
	// observation ends too.
	reg.MessageID = 2
	c.send(reg)
	c.expect(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.Deliver(ctx, gateway.Command{Device: "d1", Payload: []byte("x")}); !errors.Is(err, ErrNoAck) || !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("deliver to a silent device: %v", err)
	}
	if s.Stats().Observers != 0 {
		t.Fatal("observer kept after no ACK")
	}
}

func TestDTLSPSK(t *testing.T) {
	auth := &fakeAuth{psks: map[string]string{"sensor-1": "secret-key-1", "sensor-2": "secret-key-2"}}
	buf := &heldBuffer{auto: true}
	s := startServer(t, Options{DTLS: "127.0.0.1:0"}, buf, auth)
	addr, err := s.DTLSAddr()
	if err != nil {
		t.Fatal(err)
	}
	dial := func(identity, key string) (*udpclient.Conn, error) {
		return coapdtls.Dial(addr, &piondtls.Config{
			PSK:             func([]byte) ([]byte, error) { return []byte(key), nil },
			PSKIdentityHint: []byte(identity),
			CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
		}, options.WithErrors(func(error) {}))
	}
	c, err := dial("sensor-1", "secret-key-1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// No password needed: the PSK identity is the device.
	if code := post(t, c, "/devices/sensor-1/climate", message.AppJSON, []byte(`{"t":1}`)); code != codes.Changed {
		t.Fatalf("got %v, want 2.04", code)
	}
	if code := post(t, c, "/devices/sensor-2/climate", message.AppJSON, []byte(`{"t":1}`)); code != codes.Forbidden {
		t.Fatalf("other device's path: %v, want 4.03", code)
	}
	if rec := buf.record(t, 0); rec.Device != "sensor-1" || buf.appended() != 1 {
		t.Fatalf("record %+v (%d)", rec, buf.appended())
	}
	// A wrong key, and an identity without a key, fail the handshake: the
	// server discards the client's Finished it cannot decrypt (RFC 6347
	// §4.1.2.7), so the client gives up at its deadline. go-coap's client
	// handshakes lazily without a deadline, so pion is used directly.
	ua, _ := net.ResolveUDPAddr("udp", addr)
	for _, bad := range []struct{ id, key string }{{"sensor-1", "wrong-key"}, {"ghost", "any-key-at-all"}} {
		key := bad.key
		dc, err := piondtls.DialWithOptions("udp", ua,
			piondtls.WithPSK(func([]byte) ([]byte, error) { return []byte(key), nil }),
			piondtls.WithPSKIdentityHint([]byte(bad.id)),
			piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = dc.HandshakeContext(ctx)
		cancel()
		dc.Close()
		if err == nil {
			t.Fatalf("%s with key %q: handshake succeeded", bad.id, bad.key)
		}
	}
	if n := buf.appended(); n != 1 {
		t.Fatalf("%d records after refused handshakes", n)
	}
}

func TestDTLSOpenModeNeedsCertificate(t *testing.T) {
	s, err := New(Options{UDP: "off", DTLS: "127.0.0.1:0"}, &heldBuffer{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if err := s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "coap.dtls") {
		t.Fatalf("start: %v, want an error naming coap.dtls", err)
	}
}

func TestTCPAndTLS(t *testing.T) {
	pki := newTestPKI(t)
	auth := &fakeAuth{passwords: map[string]string{"meter-1": "pw"}}
	buf := &heldBuffer{auto: true}
	s := startServer(t, Options{TCP: "127.0.0.1:0", TLS: "127.0.0.1:0", TLSCertFile: pki.serverCert, TLSKeyFile: pki.serverKey,
		TLSClientCAFile: pki.caFile, MaxPayload: 2048}, buf, auth)
	tcpAddr, _ := s.TCPAddr()
	tlsAddr, _ := s.TLSAddr()

	c, err := tcp.Dial(tcpAddr, options.WithErrors(func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code := post(t, c, "/devices/meter-1/energy", message.AppJSON, []byte(`{"kwh":2}`), query("auth=pw")); code != codes.Changed {
		t.Fatalf("tcp: %v", code)
	}
	if code := post(t, c, "/devices/meter-1/energy", message.AppJSON, []byte(`{"kwh":2}`)); code != codes.Unauthorized {
		t.Fatalf("tcp without password: %v", code)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if rec := buf.record(t, 0); rec.QoS != 1 || rec.Device != "meter-1" {
		t.Fatalf("record %+v", rec)
	}

	// TLS with a client certificate for meter-2: no password needed.
	cert, err := tls.LoadX509KeyPair(pki.clientCert, pki.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tcp.Dial(tlsAddr, options.WithTLS(&tls.Config{RootCAs: pki.pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}}), options.WithErrors(func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if code := post(t, tc, "/devices/meter-2/energy", message.AppJSON, []byte(`{"kwh":3}`)); code != codes.Changed {
		t.Fatalf("tls: %v", code)
	}
	if code := post(t, tc, "/devices/meter-1/energy", message.AppJSON, []byte(`{"kwh":3}`)); code != codes.Forbidden {
		t.Fatalf("tls, other device: %v", code)
	}
	if rec := buf.record(t, 1); rec.Device != "meter-2" {
		t.Fatalf("record %+v", rec)
	}

	// Observe over TCP: Deliver returns once the notification is queued.
	got := make(chan string, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tc.Observe(ctx, "/devices/meter-2/commands", func(m *pool.Message) {
		if b, _ := m.ReadBody(); len(b) > 0 {
			got <- string(b)
		}
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.Stats().Observers == 1 })
	if err := s.Deliver(ctx, gateway.Command{Device: "meter-2", Payload: []byte(`{"reset":1}`)}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != `{"reset":1}` {
			t.Fatalf("notification %q", p)
		}
	case <-ctx.Done():
		t.Fatal("no notification over TLS")
	}
	tc.Close()
	waitFor(t, func() bool { return s.Stats().Observers == 0 })

	// A frame over the advertised Max-Message-Size gets Abort and the
	// connection closes.
	raw, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte{0xe0, 0xff, 0xff, 0x02}) // Len 14: 269+65535 bytes follow
	raw.SetReadDeadline(time.Now().Add(2 * time.Second))
	all, _ := readAll(raw)
	if !bytes.Contains(all, []byte("too large")) {
		t.Fatalf("got %q, want an Abort", all)
	}
}

func readAll(c net.Conn) ([]byte, error) {
	var out []byte
	b := make([]byte, 4096)
	for {
		n, err := c.Read(b)
		out = append(out, b[:n]...)
		if err != nil {
			return out, err
		}
	}
}

func TestDTLSCertificate(t *testing.T) {
	pki := newTestPKI(t)
	buf := &heldBuffer{auto: true}
	s := startServer(t, Options{DTLS: "127.0.0.1:0", DTLSCertFile: pki.serverCert, DTLSKeyFile: pki.serverKey, DTLSClientCAFile: pki.caFile}, buf, nil)
	addr, _ := s.DTLSAddr()
	cert, _ := tls.LoadX509KeyPair(pki.clientCert, pki.clientKey)
	c, err := coapdtls.Dial(addr, &piondtls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pki.pool, ServerName: "localhost"}, options.WithErrors(func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code := post(t, c, "/devices/meter-2/energy", message.AppJSON, []byte(`1`)); code != codes.Changed {
		t.Fatalf("got %v", code)
	}
	if code := post(t, c, "/devices/meter-3/energy", message.AppJSON, []byte(`1`)); code != codes.Forbidden {
		t.Fatalf("other device: %v, want 4.03", code)
	}
}

func TestMaxConnections(t *testing.T) {
	s := startServer(t, Options{TCP: "127.0.0.1:0", MaxConnections: 1}, &heldBuffer{auto: true}, nil)
	addr, _ := s.TCPAddr()
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, func() bool { return s.Stats().Connections == 1 })
	second, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := second.Read(make([]byte, 16)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second connection not closed: %v", err)
	}
}

type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
}

// newTestPKI writes a CA, a server certificate for localhost/127.0.0.1
// and a client certificate for device meter-2.
func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "iotgw test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, server bool) ([]byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		if server {
			tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(key)
		return der, kd
	}
	p := testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)
	sd, sk := issue(2, "localhost", true)
	p.serverCert, p.serverKey = write("server.pem", "CERTIFICATE", sd), write("server.key", "EC PRIVATE KEY", sk)
	cd, ck := issue(3, "meter-2", false)
	p.clientCert, p.clientKey = write("client.pem", "CERTIFICATE", cd), write("client.key", "EC PRIVATE KEY", ck)
	return p
}
