package coap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// Stats are the CoAP adapter's counters since start.
type Stats struct {
	Connections   int64  `json:"connections"`   // DTLS, TCP and TLS connections open now
	Observers     int64  `json:"observers"`     // devices observing their commands resource now
	Requests      uint64 `json:"requests"`      // requests handled (not counting duplicates)
	Acked         uint64 `json:"acked"`         // ingest requests answered 2.04 after a durable append
	Duplicates    uint64 `json:"duplicates"`    // retransmissions answered from the deduplication cache or ignored while pending
	DedupEvicted  uint64 `json:"dedup_evicted"` // cache entries dropped before EXCHANGE_LIFETIME because dedup_entries was reached
	RefusedFull   uint64 `json:"refused_full"`  // 5.03 because the buffer was full, max_inflight was reached or the server was closing
	AppendErrors  uint64 `json:"append_errors"` // appends that failed after being queued; answered 5.00
	AuthFailures  uint64 `json:"auth_failures"` // 4.01, failed DTLS handshakes included
	Forbidden     uint64 `json:"forbidden"`     // 4.03: path of another device than the authenticated one
	BadRequests   uint64 `json:"bad_requests"`  // other 4.xx answers (bad path, method, option, content)
	TooLarge      uint64 `json:"too_large"`     // 4.13
	Blocks        uint64 `json:"blocks"`        // Block1 blocks received
	Malformed     uint64 `json:"malformed"`     // datagrams or frames that are not CoAP
	Dropped       uint64 `json:"dropped"`       // datagrams dropped unread: an endpoint's queue or the busy endpoints were at their limit
	Notifications uint64 `json:"notifications"` // commands delivered (acknowledged on UDP and DTLS)
}

type counters struct {
	requests, acked, duplicates, refusedFull, appendErrors, authFailures, forbidden,
	badRequests, tooLarge, blocks, malformed, dropped, notifications atomic.Uint64
	conns atomic.Int64
}

// Server is the CoAP front door; it implements gateway.Source and
// gateway.CommandTarget.
type Server struct {
	opts   Options
	buf    gateway.Buffer
	auth   Authenticator
	status StatusRecorder
	log    *slog.Logger
	now    func() time.Time

	dedup    *dedupCache
	blocks   *blockAssembler
	obs      *observers
	out      *outbox
	inflight atomic.Int64
	mid      atomic.Uint32 // message ids of notifications
	connID   atomic.Uint64
	stats    counters

	// ctx is cancelled by Close after pending acks went out; it bounds
	// registry lookups, handshakes and notification waits.
	ctx     context.Context
	cancel  context.CancelFunc
	closing atomic.Bool
	closed  atomic.Bool
	wg      sync.WaitGroup

	warned sync.Map // message -> *atomic.Int64, unix nanoseconds of its last Warn

	mu        sync.Mutex // guards the listeners and conns below
	started   bool
	udp       *udpListener
	dtls      net.Listener
	tcp, tls  net.Listener
	conns     map[net.Conn]struct{}
	tlsConfig *tls.Config
}

var (
	_ gateway.Source        = (*Server)(nil)
	_ gateway.CommandTarget = (*Server)(nil)
)

// New builds the server; nothing listens until Start. auth nil is auth
// mode open. A nil logger discards.
func New(opts Options, buf gateway.Buffer, auth Authenticator, logger *slog.Logger) (*Server, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if buf == nil {
		return nil, errors.New("coap: no buffer")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:  opts,
		buf:   buf,
		auth:  auth,
		log:   logger.With("component", "coap"),
		now:   time.Now,
		conns: map[net.Conn]struct{}{},
	}
	if sr, ok := auth.(StatusRecorder); ok && auth != nil {
		s.status = sr
	}
	s.dedup = newDedupCache(opts.DedupEntries, exchangeLifetime)
	s.blocks = newBlockAssembler(maxTransfers, blockIdle)
	s.obs = newObservers()
	s.out = newOutbox()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mid.Store(uint32(time.Now().UnixNano()))
	return s, nil
}

// Start implements gateway.Source: it binds every listener that is not off
// and returns once they accept. On an error the listeners already bound are
// closed again. ctx bounds only the start.
func (s *Server) Start(ctx context.Context) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	if s.started {
		return errors.New("coap: already started")
	}
	s.started = true
	defer func() {
		if err != nil {
			s.closeListenersLocked()
		}
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.out.run()
	}()
	if s.opts.UDP != Off {
		l, err := s.listenUDP(ctx, s.opts.UDP)
		if err != nil {
			return fmt.Errorf("coap.udp: listen on %s: %w", s.opts.UDP, err)
		}
		s.udp = l
	}
	if s.opts.DTLS != Off {
		l, err := s.listenDTLS(s.opts.DTLS)
		if err != nil {
			return err
		}
		s.dtls = l
	}
	if s.opts.TCP != Off {
		l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.opts.TCP)
		if err != nil {
			return fmt.Errorf("coap.tcp: listen on %s: %w", s.opts.TCP, err)
		}
		s.tcp = l
		s.serveStream(l, false)
	}
	if s.opts.TLS != Off {
		cfg, err := s.streamTLSConfig()
		if err != nil {
			return err
		}
		l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.opts.TLS)
		if err != nil {
			return fmt.Errorf("coap.tls: listen on %s: %w", s.opts.TLS, err)
		}
		s.tls = tls.NewListener(l, cfg)
		s.serveStream(s.tls, true)
	}
	return nil
}

// Addr is the bound UDP address (useful with port 0).
func (s *Server) Addr() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp == nil {
		return "", ErrNotStarted
	}
	return s.udp.conn.LocalAddr().String(), nil
}

// DTLSAddr is the bound DTLS address.
func (s *Server) DTLSAddr() (string, error) {
	return s.listenerAddr(func() net.Listener { return s.dtls })
}

// TCPAddr is the bound CoAP-over-TCP address.
func (s *Server) TCPAddr() (string, error) {
	return s.listenerAddr(func() net.Listener { return s.tcp })
}

// TLSAddr is the bound CoAP-over-TLS address.
func (s *Server) TLSAddr() (string, error) {
	return s.listenerAddr(func() net.Listener { return s.tls })
}

func (s *Server) listenerAddr(get func() net.Listener) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := get()
	if l == nil {
		return "", ErrNotStarted
	}
	return l.Addr().String(), nil
}

// Close implements gateway.Source: new requests are answered 5.03, the
// answers to appends already made are sent as their appends complete
// (bounded by ctx), then listeners and connections close and every
// goroutine of the server has returned. Safe to call twice.
func (s *Server) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	s.closing.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.inflight.Load() > 0 || s.out.pending() > 0 {
		select {
		case <-ctx.Done():
			s.log.Warn("closing with answers still pending; those devices will retransmit", "pending", s.inflight.Load())
			goto stop
		case <-t.C:
		}
	}
stop:
	s.cancel()
	s.mu.Lock()
	s.closeListenersLocked()
	s.mu.Unlock()
	s.out.close()
	s.wg.Wait()
	return nil
}

func (s *Server) closeListenersLocked() {
	if s.udp != nil {
		s.udp.conn.Close()
	}
	for _, l := range []net.Listener{s.dtls, s.tcp, s.tls} {
		if l != nil {
			l.Close()
		}
	}
	for c := range s.conns {
		c.Close()
	}
	s.cancel()
	s.out.close()
}

// track registers a DTLS/TCP/TLS connection so Close can close it; it
// reports false (and the caller closes c) past max_connections or after
// Close.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() || (s.opts.MaxConnections > 0 && len(s.conns) >= s.opts.MaxConnections) {
		return false
	}
	s.conns[c] = struct{}{}
	s.stats.conns.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.stats.conns.Add(-1)
	}
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:   s.stats.conns.Load(),
		Observers:     int64(s.obs.len()),
		Requests:      s.stats.requests.Load(),
		Acked:         s.stats.acked.Load(),
		Duplicates:    s.stats.duplicates.Load(),
		DedupEvicted:  s.dedup.evictedEarly(),
		RefusedFull:   s.stats.refusedFull.Load(),
		AppendErrors:  s.stats.appendErrors.Load(),
		AuthFailures:  s.stats.authFailures.Load(),
		Forbidden:     s.stats.forbidden.Load(),
		BadRequests:   s.stats.badRequests.Load(),
		TooLarge:      s.stats.tooLarge.Load(),
		Blocks:        s.stats.blocks.Load(),
		Malformed:     s.stats.malformed.Load(),
		Dropped:       s.stats.dropped.Load(),
		Notifications: s.stats.notifications.Load(),
	}
}

// warnInterval spaces out warnings about conditions that hit every request
// while they last (registry down, disk failing): one Warn per message per
// interval, the rest at Debug.
const warnInterval = 10 * time.Second

func (s *Server) warn(msg string, args ...any) {
	v, _ := s.warned.LoadOrStore(msg, new(atomic.Int64))
	last := v.(*atomic.Int64)
	now := s.now().UnixNano()
	if prev := last.Load(); now-prev >= int64(warnInterval) && last.CompareAndSwap(prev, now) {
		s.log.Warn(msg, args...)
		return
	}
	s.log.Debug(msg, args...)
}
