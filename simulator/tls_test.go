package simulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// selfSigned makes a certificate for 127.0.0.1 and writes it as a CA file.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "iotgw test broker"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

func TestRunTLS(t *testing.T) {
	cert, ca := selfSigned(t)
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err := s.AddListener(listeners.NewNet("tls", tl)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name     string
		opt      Options
		wantAcks bool
	}{
		{"ca file", Options{CAFile: ca}, true},
		{"insecure", Options{Insecure: true}, true},
		{"unknown authority", Options{Duration: 200 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 40 * time.Millisecond}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opt
			o.Broker, o.TLS, o.Trucks, o.Messages = l.Addr().String(), true, 2, 20
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantAcks && (rep.Acked != 40 || rep.Errors != 0) {
				t.Fatalf("acked %d errors %d", rep.Acked, rep.Errors)
			}
			if !tt.wantAcks && (rep.Sent != 0 || rep.Errors == 0) {
				t.Fatalf("without the CA: sent %d errors %d", rep.Sent, rep.Errors)
			}
		})
	}
	_, err = Run(context.Background(), Options{Trucks: 1, TLS: true, CAFile: filepath.Join(t.TempDir(), "none.pem")})
	if err == nil {
		t.Fatal("missing ca_file accepted")
	}
}
