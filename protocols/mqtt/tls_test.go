package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// fakeRegistry has passwords, disabled devices and Get, as devices.Registry.
type fakeRegistry struct {
	passwords map[string]string
	disabled  map[string]bool
}

func (f fakeRegistry) Authenticate(_ context.Context, device, password string) error {
	if p, ok := f.passwords[device]; ok && p == password && !f.disabled[device] {
		return nil
	}
	return fmt.Errorf("device %s: %w", device, devices.ErrBadCredentials)
}

func (f fakeRegistry) Get(_ context.Context, id string) (devices.Device, error) {
	if _, ok := f.passwords[id]; !ok {
		return devices.Device{}, devices.ErrUnknownDevice
	}
	return devices.Device{ID: id, Registered: true, Disabled: f.disabled[id]}, nil
}

func dialTLS(t testing.TB, s *Server, cfg *tls.Config) net.Conn {
	t.Helper()
	addr, err := s.TLSAddr()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		// TLS 1.2 reports a refused client certificate here, TLS 1.3 on
		// the first read: the caller sees no CONNACK either way.
		return nil
	}
	return conn
}

// TestMutualTLSAuthMatrix connects over TLS with and without client
// certificates, for both protocol versions: only the right identities get
// in, and what they publish is stored under the certificate's device.
func TestMutualTLSAuthMatrix(t *testing.T) {
	p := newPKI(t)
	other := newTestCA(t, "someone else's CA")
	cert := func(spec certSpec) *leaf { l := p.ca.issue(t, spec); return &l }
	truck1 := cert(certSpec{cn: "truck-1"})
	sanOnly := cert(certSpec{dns: []string{"truck-2"}})
	expired := cert(certSpec{cn: "truck-1", notAfter: time.Now().Add(-time.Hour)})
	unknownCA := other.issue(t, certSpec{cn: "truck-1"})
	ghost := cert(certSpec{cn: "ghost"})
	disabled := cert(certSpec{cn: "truck-9"})
	serverUsage := cert(certSpec{cn: "truck-1", server: true})
	badID := cert(certSpec{cn: "not a/valid id"})

	reg := fakeRegistry{
		passwords: map[string]string{"truck-1": "s3cret", "truck-2": "two", "truck-9": "nine"},
		disabled:  map[string]bool{"truck-9": true},
	}
	buf := &heldBuffer{}
	s := startWith(t, p.options(ClientAuthOptional), buf, reg, ownTopics{})

	cases := []struct {
		name               string
		cert               *leaf
		client, user, pass string
		want               byte // CONNACK reason (MQTT 5); 0xff: refused before CONNACK
		device             string
	}{
		{"password, no certificate", nil, "truck-1", "truck-1", "s3cret", 0, "truck-1"},
		{"wrong password, no certificate", nil, "truck-1", "truck-1", "nope", 0x86, ""},
		{"anonymous, no certificate", nil, "truck-1", "", "", 0x86, ""},
		{"certificate common name", truck1, "truck-1", "", "", 0, "truck-1"},
		{"certificate and matching username", truck1, "truck-1", "truck-1", "", 0, "truck-1"},
		{"certificate judges, password ignored", truck1, "truck-1", "truck-1", "wrong", 0, "truck-1"},
		{"certificate DNS name only", sanOnly, "truck-2", "", "", 0, "truck-2"},
		{"certificate, another device's client id", truck1, "truck-2", "", "", 0x86, ""},
		{"certificate, another device's username", truck1, "truck-2", "truck-2", "two", 0x86, ""},
		{"certificate, username matches, client id not", truck1, "truck-2", "truck-1", "", 0x85, ""},
		{"expired certificate", expired, "truck-1", "", "", 0xff, ""},
		{"certificate from an unknown CA", &unknownCA, "truck-1", "", "", 0xff, ""},
		{"server certificate as client certificate", serverUsage, "truck-1", "", "", 0xff, ""},
		{"certificate for an unregistered device", ghost, "ghost", "", "", 0x86, ""},
		{"certificate for a disabled device", disabled, "truck-9", "", "", 0x86, ""},
		{"certificate with no valid device id", badID, "truck-1", "", "", 0x86, ""},
	}
	for _, ver := range []byte{4, 5} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("v%d/%s", ver, c.name), func(t *testing.T) {
				want := c.want
				if ver == 4 && want != 0 && want != 0xff {
					want = connackV3[want]
				}
				failures := s.Stats().AuthFailures
				conn := dialTLS(t, s, p.clientConfig(c.cert))
				got := byte(0xff)
				var cl *rawClient
				if conn != nil {
					cl = newRawClient(t, conn, ver)
					got = cl.connect(connectOpts{ver: ver, clientID: c.client, user: c.user, pass: c.pass})
				}
				if got != want {
					t.Fatalf("CONNACK reason 0x%02x, want 0x%02x", got, want)
				}
				if want != 0 {
					if s.Stats().AuthFailures <= failures {
						t.Errorf("refusal not counted: %+v", s.Stats())
					}
					return
				}
				before := buf.appended()
				cl.publish(1, 1, "devices/"+c.device+"/position", "x")
				waitFor(t, func() bool { return buf.appended() == before+1 })
				buf.release(nil)
				if ack := cl.expect(packets.Puback); ack.ReasonCode != 0 {
					t.Fatalf("PUBACK reason 0x%02x", ack.ReasonCode)
				}
				var rec gateway.Record
				if err := gateway.DecodeRecord(buf.data[before], &rec); err != nil || rec.Device != c.device {
					t.Fatalf("record device %q (%v), want %q", rec.Device, err, c.device)
				}
			})
		}
	}
}

// TestTLSRequireClientCert: with tls_client_auth require there is no TLS
// session without a valid client certificate, whatever the password.
func TestTLSRequireClientCert(t *testing.T) {
	p := newPKI(t)
	truck1 := p.ca.issue(t, certSpec{cn: "truck-1"})
	reg := fakeRegistry{passwords: map[string]string{"truck-1": "s3cret"}}
	s := startWith(t, p.options(ClientAuthRequire), &heldBuffer{}, reg, ownTopics{})

	if conn := dialTLS(t, s, p.clientConfig(nil)); conn != nil {
		if code := newRawClient(t, conn, 5).connect(connectOpts{ver: 5, clientID: "truck-1", user: "truck-1", pass: "s3cret"}); code != 0xff {
			t.Fatalf("connection without a client certificate got CONNACK 0x%02x", code)
		}
	}
	conn := dialTLS(t, s, p.clientConfig(&truck1))
	if conn == nil {
		t.Fatal("handshake with a valid certificate failed")
	}
	if code := newRawClient(t, conn, 5).connect(connectOpts{ver: 5, clientID: "truck-1"}); code != 0 {
		t.Fatalf("CONNACK 0x%02x", code)
	}
}

// TestTLSVersionsAndPlainBytes: TLS below 1.2 and plain MQTT on the TLS
// port get nowhere; tls_min_version 1.3 refuses 1.2.
func TestTLSVersionsAndPlainBytes(t *testing.T) {
	p := newPKI(t)
	s := startWith(t, p.options(""), &heldBuffer{}, nil, nil)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		cfg := p.clientConfig(nil)
		cfg.MinVersion, cfg.MaxVersion = v, v
		if conn := dialTLS(t, s, cfg); conn != nil {
			t.Errorf("TLS version %x accepted", v)
		}
	}
	cfg := p.clientConfig(nil)
	cfg.MaxVersion = tls.VersionTLS12
	if conn := dialTLS(t, s, cfg); conn == nil {
		t.Error("TLS 1.2 refused")
	} else if code := newRawClient(t, conn, 4).connect(connectOpts{ver: 4, clientID: "truck-1"}); code != 0 {
		t.Errorf("TLS 1.2 CONNACK 0x%02x", code)
	}

	addr, _ := s.TLSAddr()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if code := newRawClient(t, raw, 4).connect(connectOpts{ver: 4, clientID: "plain"}); code != 0xff {
		t.Errorf("plain MQTT on the TLS port got CONNACK 0x%02x", code)
	}

	o13 := p.options("")
	o13.TLSMinVersion = "1.3"
	s13 := startWith(t, o13, &heldBuffer{}, nil, nil)
	if conn := dialTLS(t, s13, cfg); conn != nil {
		t.Error("tls_min_version 1.3 accepted TLS 1.2")
	}
}

// TestNoTakeoverByAnotherIdentity: while truck-1 is connected, other
// identities (another device's password or certificate, a wrong password)
// using client id truck-1 are refused and truck-1's connection is
// untouched. truck-1 itself may take its session over.
func TestNoTakeoverByAnotherIdentity(t *testing.T) {
	p := newPKI(t)
	truck2 := p.ca.issue(t, certSpec{cn: "truck-2"})
	reg := fakeRegistry{passwords: map[string]string{"truck-1": "s3cret", "truck-2": "two"}}
	opts := p.options(ClientAuthOptional)
	buf := &heldBuffer{}
	s := startWith(t, opts, buf, reg, ownTopics{})

	for _, ver := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			victim := mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1", user: "truck-1", pass: "s3cret"})
			attempts := []struct {
				name string
				conn func() net.Conn
				o    connectOpts
			}{
				{"another device's password", func() net.Conn { return dialTCP(t, s) }, connectOpts{clientID: "truck-1", user: "truck-2", pass: "two"}},
				{"wrong password", func() net.Conn { return dialTCP(t, s) }, connectOpts{clientID: "truck-1", user: "truck-1", pass: "guess"}},
				{"no credentials", func() net.Conn { return dialTCP(t, s) }, connectOpts{clientID: "truck-1"}},
				{"another device's certificate", func() net.Conn { return dialTLS(t, s, p.clientConfig(&truck2)) }, connectOpts{clientID: "truck-1"}},
				{"another device's certificate, victim's username", func() net.Conn { return dialTLS(t, s, p.clientConfig(&truck2)) }, connectOpts{clientID: "truck-1", user: "truck-1", pass: "s3cret"}},
			}
			for _, a := range attempts {
				a.o.ver = ver
				if code := newRawClient(t, a.conn(), ver).connect(a.o); code == 0 || code == 0xff {
					t.Fatalf("%s: CONNACK 0x%02x, want a refusal", a.name, code)
				}
			}
			// The victim's connection still works.
			victim.publish(1, 1, "devices/truck-1/position", "still here")
			waitFor(t, func() bool { return buf.release(nil) == 1 })
			if ack := victim.expect(packets.Puback); ack.PacketID != 1 {
				t.Fatalf("victim's PUBACK id %d", ack.PacketID)
			}
			// The device itself may take its session over.
			mustDial(t, s, connectOpts{ver: ver, clientID: "truck-1", user: "truck-1", pass: "s3cret"})
			victim.expectClosed(3 * time.Second)
		})
	}
}
