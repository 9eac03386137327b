package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/iotgw/iotgw/devices"
)

// serverTLS builds the configuration of the TLS and secure WebSocket
// listeners from the files the options name.
//
// Client certificates are verified by verifyClient rather than by crypto/tls
// (ClientAuth asks for a certificate without verifying it), so that a
// refused certificate is counted and logged with its subject and the reason,
// and so that the check runs on resumed sessions too: an expired
// certificate cannot ride on a session ticket issued before it expired.
func (s *Server) serverTLS() (*tls.Config, error) {
	o := &s.opts
	cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls_cert_file %s, mqtt.tls_key_file %s: %w", o.TLSCertFile, o.TLSKeyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	if o.TLSMinVersion == "1.3" {
		cfg.MinVersion = tls.VersionTLS13
	}
	if o.TLSClientCAFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(o.TLSClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls_client_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("mqtt.tls_client_ca_file %s: no PEM certificate found", o.TLSClientCAFile)
	}
	cfg.ClientAuth = tls.RequestClientCert
	if o.TLSClientAuth == ClientAuthRequire {
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	cfg.ClientCAs = pool // only advertised to clients as acceptable issuers
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return s.verifyClient(pool, cs) }
	return cfg, nil
}

// errCertRefused wraps every client certificate failure.
var errCertRefused = errors.New("client certificate refused")

// verifyClient checks the client certificate, if any, against the client
// CAs, for client authentication, at the current time.
func (s *Server) verifyClient(roots *x509.CertPool, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // optional, and the device did not send one
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   s.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		s.stats.authFailures.Add(1)
		s.log.Info("connection refused: client certificate", "subject", leaf.Subject.String(), "error", err)
		return fmt.Errorf("%w: %w", errCertRefused, err)
	}
	return nil
}

// certIdentities returns the device ids a client's verified certificate
// vouches for: its common name and DNS subject alternative names that are
// valid device ids. nil when the connection has no client certificate.
func certIdentities(cs tls.ConnectionState) []string {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	var ids []string
	for _, id := range append([]string{leaf.Subject.CommonName}, leaf.DNSNames...) {
		if devices.ValidID(id) == nil && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if ids == nil {
		ids = []string{} // a certificate, but for no valid device id
	}
	return ids
}
