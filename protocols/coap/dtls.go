package coap

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/pion/logging"

	"github.com/iotgw/iotgw/devices"
)

const (
	// handshakeTimeout bounds a DTLS or TLS handshake.
	handshakeTimeout = 10 * time.Second
	// maxDTLSRecord is the largest DTLS record plaintext (2^14, RFC 6347).
	maxDTLSRecord = 16 << 10
)

// pskSuites are the DTLS-PSK cipher suites offered; AES-128-CCM-8 is the one
// RFC 7252 §9.1.3.1 makes mandatory for CoAP.
var pskSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_PSK_WITH_AES_128_CCM_8,
	piondtls.TLS_PSK_WITH_AES_128_CCM,
	piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_PSK_WITH_AES_128_CBC_SHA256,
	piondtls.TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256,
}

// certSuites are the certificate cipher suites offered; ECDHE-ECDSA with
// AES-128-CCM-8 is RFC 7252 §9.1.3.3's mandatory one.
var certSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	piondtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	piondtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	piondtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// dtlsPeer is a device on one DTLS session.
type dtlsPeer struct {
	s     *Server
	conn  net.Conn
	ep    epKey
	ident string
	done  chan struct{}
}

func (p *dtlsPeer) endpoint() epKey       { return p.ep }
func (p *dtlsPeer) identity() string      { return p.ident }
func (p *dtlsPeer) spoofable() bool       { return false }
func (p *dtlsPeer) stream() bool          { return false }
func (p *dtlsPeer) gone() <-chan struct{} { return p.done }
func (p *dtlsPeer) send(b []byte)         { p.s.out.push(datagram{conn: p.conn, b: b}) }

// dtlsConfig builds the DTLS server configuration: PSK from the registry
// when there is one, the certificate when configured, client certificates
// verified against dtls_client_ca_file when set.
func (s *Server) dtlsConfig() (*piondtls.Config, error) {
	cfg := &piondtls.Config{
		ExtendedMasterSecret: piondtls.RequestExtendedMasterSecret,
		LoggerFactory:        pionLogs{s.log},
		OnConnectionAttempt: func(net.Addr) error {
			if s.closing.Load() {
				return ErrClosed
			}
			if max := s.opts.MaxConnections; max > 0 && s.stats.conns.Load() >= int64(max) {
				return errors.New("coap.max_connections reached")
			}
			return nil
		},
	}
	if s.auth != nil {
		cfg.PSK = s.pskFor
		cfg.CipherSuites = append(cfg.CipherSuites, pskSuites...)
	}
	if s.opts.DTLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.DTLSCertFile, s.opts.DTLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("coap.dtls_cert_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		cfg.CipherSuites = append(cfg.CipherSuites, certSuites...)
		if s.opts.DTLSClientCAFile != "" {
			pool, err := loadCAs(s.opts.DTLSClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("coap.dtls_client_ca_file: %w", err)
			}
			cfg.ClientCAs = pool
			cfg.ClientAuth = piondtls.VerifyClientCertIfGiven
		}
	}
	if len(cfg.CipherSuites) == 0 {
		return nil, errors.New("coap.dtls: no credentials to offer: with auth mode open there are no pre-shared keys, so set coap.dtls_cert_file and coap.dtls_key_file (or coap.dtls: off)")
	}
	return cfg, nil
}

// pskFor is the DTLS PSK callback: the identity a client sends is its
// device id. An id that has no key gets a random one, so the handshake
// fails at Finished exactly like a wrong key and a client cannot tell which
// ids exist (RFC 4279 §5.2 allows this).
func (s *Server) pskFor(identity []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(s.ctx, authTimeout)
	defer cancel()
	id := string(identity)
	key, err := s.auth.PSK(ctx, id)
	switch {
	case err == nil:
		return key, nil
	case errors.Is(err, devices.ErrUnknownDevice), errors.Is(err, devices.ErrNoPSK),
		errors.Is(err, devices.ErrDisabled), errors.Is(err, devices.ErrInvalidID):
		s.log.Debug("dtls handshake with an identity that has no key", "device", logID(id), "error", err)
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		return key, nil
	default:
		s.warn("device registry unavailable for a dtls handshake", "device", logID(id), "error", err)
		return nil, err
	}
}

func (s *Server) listenDTLS(addr string) (net.Listener, error) {
	cfg, err := s.dtlsConfig()
	if err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("coap.dtls: %w", err)
	}
	l, err := piondtls.Listen("udp", ua, cfg)
	if err != nil {
		return nil, fmt.Errorf("coap.dtls: listen on %s: %w", addr, err)
	}
	s.acceptLoop(l, "dtls accept", func(c net.Conn) { s.serveDTLS(c.(*piondtls.Conn)) })
	return l, nil
}

// serveDTLS runs one DTLS session: the handshake, then its datagrams in
// order on this goroutine.
func (s *Server) serveDTLS(c *piondtls.Conn) {
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.stats.authFailures.Add(1)
		s.log.Debug("dtls handshake failed", "remote", c.RemoteAddr(), "error", err)
		return
	}
	p := &dtlsPeer{s: s, conn: c, ep: epKey{addr: addrPort(c.RemoteAddr()), tr: transportDTLS, conn: s.connID.Add(1)}, done: make(chan struct{})}
	if st, ok := c.ConnectionState(); ok {
		switch {
		case len(st.IdentityHint) > 0:
			p.ident = string(st.IdentityHint)
		case len(st.PeerCertificates) > 0 && s.opts.DTLSClientCAFile != "":
			// Verified by the handshake against dtls_client_ca_file.
			if cert, err := x509.ParseCertificate(st.PeerCertificates[0]); err == nil {
				p.ident = certIdentity([][]*x509.Certificate{{cert}})
			}
		}
	}
	defer func() {
		close(p.done)
		s.unobserveEndpoint(p.ep)
	}()
	buf := make([]byte, maxDTLSRecord)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if n < 4 {
			s.stats.malformed.Add(1)
			continue
		}
		s.handleDatagram(p, append([]byte(nil), buf[:n]...))
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}

// logID cuts a client-chosen identity for a log line.
func logID(id string) string {
	if len(id) > 64 {
		return id[:64] + "..."
	}
	return id
}

// pionLogs sends pion's logs to the server's logger at Debug: a failed
// handshake is an event about one client, not about the gateway.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) Trace(string)          {}
func (l pionLogger) Tracef(string, ...any) {}
func (l pionLogger) Debug(string)          {}
func (l pionLogger) Debugf(string, ...any) {}
func (l pionLogger) Info(msg string)       { l.log.Debug(msg) }
func (l pionLogger) Infof(f string, a ...any) {
	l.log.Debug(fmt.Sprintf(f, a...))
}
func (l pionLogger) Warn(msg string) { l.log.Debug(msg) }
func (l pionLogger) Warnf(f string, a ...any) {
	l.log.Debug(fmt.Sprintf(f, a...))
}
func (l pionLogger) Error(msg string) { l.log.Debug(msg) }
func (l pionLogger) Errorf(f string, a ...any) {
	l.log.Debug(fmt.Sprintf(f, a...))
}
