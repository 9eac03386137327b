package mqtt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64 = 1

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf is an issued certificate with its key, as PEM and as tls.Certificate.
type leaf struct {
	certPEM, keyPEM []byte
	tls             tls.Certificate
}

// certSpec describes a leaf certificate.
type certSpec struct {
	cn       string
	dns      []string
	ips      []net.IP
	server   bool // server auth usage, else client auth
	notAfter time.Time
}

func (ca *testCA) issue(t testing.TB, spec certSpec) leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if spec.notAfter.IsZero() {
		spec.notAfter = time.Now().Add(24 * time.Hour)
	}
	usage := x509.ExtKeyUsageClientAuth
	if spec.server {
		usage = x509.ExtKeyUsageServerAuth
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: spec.cn},
		DNSNames:     spec.dns,
		IPAddresses:  spec.ips,
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     spec.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l := leaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
	l.tls, err = tls.X509KeyPair(l.certPEM, l.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// pki is a test's certificates: a CA that signs the server certificate
// (for 127.0.0.1 and localhost) and device certificates.
type pki struct {
	ca                        *testCA
	dir                       string
	caFile, certFile, keyFile string
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{ca: newTestCA(t, "iotgw test CA"), dir: t.TempDir()}
	srv := p.ca.issue(t, certSpec{cn: "iotgw", dns: []string{"localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}, server: true})
	p.caFile = p.write(t, "ca.pem", p.ca.pem)
	p.certFile = p.write(t, "server.pem", srv.certPEM)
	p.keyFile = p.write(t, "server-key.pem", srv.keyPEM)
	return p
}

func (p *pki) write(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// options are the TLS options for a server with this PKI; clientAuth ""
// asks for no client certificates.
func (p *pki) options(clientAuth string) Options {
	o := Options{TLS: "127.0.0.1:0", TLSCertFile: p.certFile, TLSKeyFile: p.keyFile}
	if clientAuth != "" {
		o.TLSClientCAFile, o.TLSClientAuth = p.caFile, clientAuth
	}
	return o
}

// clientConfig trusts the test CA and presents cert, if given.
func (p *pki) clientConfig(cert *leaf) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if cert != nil {
		// Always send it, even when the server does not list its issuer
		// (Go's client would otherwise send none), as device firmware does.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.tls, nil }
	}
	return cfg
}
