package coap

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	tcpcoder "github.com/plgd-dev/go-coap/v3/tcp/coder"
)

const (
	// streamQueue bounds the frames waiting to be written to one
	// connection; a client that lets it fill does not read its answers and
	// is disconnected.
	streamQueue = 1024
	// writeTimeout bounds one frame write.
	writeTimeout = 10 * time.Second
	// frameHeadroom is what a frame may carry besides max_payload: header,
	// token and options.
	frameHeadroom = 1024
)

// streamPeer is a device on one TCP or TLS connection (RFC 8323).
type streamPeer struct {
	s      *Server
	c      net.Conn
	ep     epKey
	ident  string
	out    chan []byte
	done   chan struct{} // closed when the connection is closed
	once   sync.Once
	kill   chan struct{} // closed to make the writer close the connection
	kOnce  sync.Once
	queued atomic.Int64 // frames sent to out and not yet written
}

func (p *streamPeer) endpoint() epKey       { return p.ep }
func (p *streamPeer) identity() string      { return p.ident }
func (p *streamPeer) spoofable() bool       { return false }
func (p *streamPeer) stream() bool          { return true }
func (p *streamPeer) gone() <-chan struct{} { return p.done }

func (p *streamPeer) send(b []byte) {
	p.queued.Add(1)
	select {
	case p.out <- b:
	case <-p.done:
		p.queued.Add(-1)
	default:
		p.queued.Add(-1)
		// send runs on the buffer's writer goroutine too, which must not
		// wait for a TLS close_notify: the writer closes the connection.
		p.kOnce.Do(func() {
			p.s.log.Debug("coap client does not read its answers; closing", "remote", p.c.RemoteAddr())
			close(p.kill)
		})
	}
}

func (p *streamPeer) close() {
	p.once.Do(func() {
		close(p.done)
		p.c.Close()
	})
}

// streamTLSConfig is the CoAP-over-TLS server configuration. RFC 8323 §4.3
// names the ALPN protocol "coap".
func (s *Server) streamTLSConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(s.opts.TLSCertFile, s.opts.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("coap.tls_cert_file: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"coap"}, MinVersion: tls.VersionTLS12}
	if s.opts.TLSClientCAFile != "" {
		pool, err := loadCAs(s.opts.TLSClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("coap.tls_client_ca_file: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// serveStream accepts connections on l until it is closed.
func (s *Server) serveStream(l net.Listener, secure bool) {
	s.acceptLoop(l, "coap accept", func(c net.Conn) { s.serveStreamConn(c, secure) })
}

// acceptLoop accepts connections on l on its own goroutine until l is
// closed, and serves each tracked one (within coap.max_connections) on its
// own goroutine; serve must not return before it is done with c, which is
// closed after.
func (s *Server) acceptLoop(l net.Listener, what string, serve func(net.Conn)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) || s.closing.Load() {
					return
				}
				s.log.Debug(what, "error", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if !s.track(c) {
				c.Close()
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.untrack(c)
				defer c.Close()
				serve(c)
			}()
		}
	}()
}

func (s *Server) serveStreamConn(c net.Conn, secure bool) {
	tr := transportTCP
	p := &streamPeer{s: s, c: c, out: make(chan []byte, streamQueue), done: make(chan struct{}), kill: make(chan struct{})}
	defer p.close()
	if secure {
		tr = transportTLS
		tc := c.(*tls.Conn)
		ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.stats.authFailures.Add(1)
			s.log.Debug("tls handshake failed", "remote", c.RemoteAddr(), "error", err)
			return
		}
		p.ident = certIdentity(tc.ConnectionState().VerifiedChains)
	}
	p.ep = epKey{addr: addrPort(c.RemoteAddr()), tr: tr, conn: s.connID.Add(1)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		p.write()
	}()
	defer s.unobserveEndpoint(p.ep)

	maxFrame := int(s.opts.MaxPayload) + frameHeadroom
	// RFC 8323 §5.3: each side starts with its Capabilities and Settings.
	p.send(encodeFrame(message.Message{Code: codes.CSM, Options: message.Options{uintOption(message.TCPMaxMessageSize, uint32(maxFrame))}}))

	r := bufio.NewReaderSize(c, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		frame, err := readFrame(r, maxFrame)
		if err != nil {
			if errors.Is(err, errFrameTooLarge) {
				s.stats.tooLarge.Add(1)
				p.abort("message too large")
			}
			return
		}
		m := message.Message{Options: make(message.Options, 0, maxOptions)}
		if _, err := tcpcoder.DefaultCoder.Decode(frame, &m); err != nil {
			s.stats.malformed.Add(1)
			p.abort("malformed message")
			return
		}
		switch {
		case m.Code == codes.Ping:
			p.send(encodeFrame(message.Message{Code: codes.Pong, Token: m.Token}))
		case m.Code == codes.Release || m.Code == codes.Abort:
			return
		case m.Code == codes.Empty || m.Code >= 32:
			// CSM, Pong, empty messages and responses: nothing to answer
			// (this server sends no requests).
		default:
			req := &request{code: m.Code, token: m.Token, opts: m.Options, payload: m.Payload, con: true, size: len(frame), peer: p}
			s.serve(req, func(r response) {
				if b := encodeFrame(message.Message{Token: req.token, Code: r.code, Options: r.opts, Payload: r.payload}); b != nil {
					p.send(b)
				}
			})
		}
	}
}

// write sends queued frames until the connection ends.
func (p *streamPeer) write() {
	for {
		select {
		case b := <-p.out:
			_ = p.c.SetWriteDeadline(time.Now().Add(writeTimeout))
			_, err := p.c.Write(b)
			p.queued.Add(-1)
			if err != nil {
				p.close()
				return
			}
		case <-p.kill:
			p.close()
			return
		case <-p.done:
			return
		}
	}
}

// abort sends an Abort (RFC 8323 §5.6) after what is queued; the caller
// then closes the connection.
func (p *streamPeer) abort(why string) {
	p.send(encodeFrame(message.Message{Code: codes.Abort, Payload: []byte(why)}))
	deadline := time.Now().Add(time.Second)
	for p.queued.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

var errFrameTooLarge = errors.New("frame larger than the advertised Max-Message-Size")

// readFrame reads one RFC 8323 §3.2 frame: Len and TKL, the extended
// length, the code, the token, then Len bytes of options and payload.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	b0, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	lenNib, tkl := int(b0>>4), int(b0&0x0f)
	if tkl > message.MaxTokenSize {
		return nil, fmt.Errorf("token length %d", tkl)
	}
	var ext int
	switch lenNib {
	case 13:
		ext = 1
	case 14:
		ext = 2
	case 15:
		ext = 4
	}
	var eb [4]byte
	if _, err := io.ReadFull(r, eb[:ext]); err != nil {
		return nil, err
	}
	n := uint64(lenNib)
	switch ext {
	case 1:
		n = 13 + uint64(eb[0])
	case 2:
		n = 269 + uint64(binary.BigEndian.Uint16(eb[:2]))
	case 4:
		n = 65805 + uint64(binary.BigEndian.Uint32(eb[:4]))
	}
	if n > uint64(max) {
		return nil, errFrameTooLarge
	}
	frame := make([]byte, 1+ext+1+tkl+int(n))
	frame[0] = b0
	copy(frame[1:], eb[:ext])
	if _, err := io.ReadFull(r, frame[1+ext:]); err != nil {
		return nil, err
	}
	return frame, nil
}
