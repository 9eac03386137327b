package mqtt

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The gateway binds its own net.Listeners and serves them to mochi itself
// (mochiListener), for reasons mochi's TCP and WebSocket listeners do not
// cover:
//
//   - a panic in mochi's packet decoders (v2.7.9 indexes past the end of a
//     truncated MQTT 5 SUBSCRIBE) would kill the process; here it ends that
//     connection only.
//   - mochi reads the CONNECT packet with no deadline, so a socket that
//     connects and sends nothing (or one byte a minute) holds a goroutine
//     and a file descriptor forever. Every accepted connection here gets a
//     read deadline of connect_timeout; mochi replaces it with the client's
//     keep-alive once the CONNECT is read.
//   - mochi counts clients only after reading CONNECT and checks its limit
//     before authentication, so concurrent connects overshoot it. A
//     trackedConn holds one admission slot from CONNECT until it is closed,
//     however the connection ends (see Server.admit).
//   - tests and the benchmark listen on port 0 and need the bound address of
//     every listener, which mochi's WebSocket listener does not expose.

// mochiListener is mochi's listeners.Net, serving a net.Listener, with
// each connection's goroutine guarded against panics.
type mochiListener struct {
	id  string
	ln  net.Listener
	s   *Server
	end atomic.Bool
}

var _ listeners.Listener = (*mochiListener)(nil)

func (l *mochiListener) ID() string                { return l.id }
func (l *mochiListener) Address() string           { return l.ln.Addr().String() }
func (l *mochiListener) Protocol() string          { return l.ln.Addr().Network() }
func (l *mochiListener) Init(_ *slog.Logger) error { return nil }

// Serve accepts until the listener is closed; mochi runs it on a goroutine
// of its own and stops it with Close. Other accept errors (out of file
// descriptors, above all) are logged and retried with a backoff up to a
// second, as net/http does: mochi's own listeners stop accepting for good.
func (l *mochiListener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.end.Load() {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.s.stats.acceptErrors.Add(1)
			l.s.log.Error("accept failed; retrying", "listener", l.id, "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if l.end.Load() {
			conn.Close()
			return
		}
		go l.s.serveConn(l.id, conn, establish)
	}
}

// Close disconnects the listener's clients and stops accepting. It does
// not use mochi's closeClients: that takes its clients map's read lock
// twice (Clients.GetByListener calls Len), which deadlocks as soon as a
// client that is disconnecting meanwhile waits for the write lock, so a
// shutdown while devices drop off hung for good.
func (l *mochiListener) Close(_ listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		for _, cl := range l.s.mochi.Clients.GetAll() {
			if cl.Net.Listener == l.id && !cl.Closed() {
				_ = l.s.mochi.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	}
	l.ln.Close()
}

// serveConn runs mochi's connection handling for one connection. A panic
// is logged with its stack, counted, and cleaned up after as mochi would
// after a read error: the connection closes, the session ends, and a clean
// session is forgotten.
func (s *Server) serveConn(id string, conn net.Conn, establish listeners.EstablishFn) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		s.stats.panics.Add(1)
		s.log.Error("mqtt connection handler panicked; connection closed", "listener", id, "remote", conn.RemoteAddr().String(),
			"panic", r, "stack", string(debug.Stack()))
		conn.Close()
		if tc := baseConn(conn); tc != nil && tc.client != nil {
			s.forgetClient(tc.client)
		}
	}()
	err := establish(id, conn)
	if err != nil {
		if errors.Is(err, packets.ErrPacketTooLarge) {
			s.stats.tooLarge.Add(1)
		}
		s.log.Debug("connection ended", "listener", id, "remote", conn.RemoteAddr().String(), "error", err)
	}
	if tc := baseConn(conn); tc != nil && tc.client != nil {
		if cur := s.devices.owner(s.identity(tc.client)); cur != nil && cur.cl != tc.client {
			s.keepClientKnown(cur.cl)
		}
	}
}

// forgetClient does what mochi does after a client's read loop ends, for a
// client whose goroutine panicked (mochi's deferred calls have already
// stopped it and released its counters).
func (s *Server) forgetClient(cl *mochi.Client) {
	err := errors.New("connection handler panicked")
	cl.Stop(err)
	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
		(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	(&hook{s: s}).OnDisconnect(cl, err, expire)
	if expire && !cl.IsTakenOver() {
		cl.ClearInflights()
		s.mochi.UnsubscribeClient(cl)
		if cur, ok := s.mochi.Clients.Get(cl.ID); ok && cur == cl {
			s.mochi.Clients.Delete(cl.ID)
		}
	}
}

// trackedListener sets the connect deadline on each accepted connection and
// wraps it so that the server can account for it.
type trackedListener struct {
	net.Listener
	s *Server
	// handoff: accepted connections go to mochi as they are (TCP) or under
	// TLS; false under the WebSocket listener, which hands mochi a wsConn.
	handoff bool
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s, deadline: time.Now().Add(l.s.opts.ConnectTimeout)}
	if sc, ok := c.(syscall.Conn); ok {
		tc.ahead.raw, _ = sc.SyscallConn()
	}
	_ = c.SetReadDeadline(tc.deadline)
	if l.handoff {
		tc.entry = &handoff{s: l.s}
		l.s.handed.Add(1)
	}
	return tc, nil
}

// handoff notes when mochi starts reading a connection it was handed.
//
// mochi's connection goroutine registers with a WaitGroup (Add) that its
// Close waits on; an Add racing with that Wait is a data race. Its first
// read of the connection comes after the Add, so Server.Close, having
// stopped the listeners, waits until every connection handed over was read
// from before it calls mochi's Close.
type handoff struct {
	s    *Server
	done atomic.Bool
}

func (h *handoff) enter() {
	if h != nil && !h.done.Load() && h.done.CompareAndSwap(false, true) {
		h.s.entered.Add(1)
	}
}

// Connection admission states of a trackedConn.
const (
	connOpen     int32 = iota // accepted, no CONNECT yet
	connAdmitted              // holds a slot of mqtt.max_connections
	connClosed
)

// trackedConn is one accepted connection, below any TLS or WebSocket layer.
type trackedConn struct {
	net.Conn
	s        *Server
	deadline time.Time // the CONNECT must be read by then
	state    atomic.Int32
	entry    *handoff      // nil under the WebSocket listener
	client   *mochi.Client // set by OnConnect, on the connection's goroutine
	ahead    readAhead     // see readahead.go
}

func (c *trackedConn) Read(p []byte) (int, error) {
	c.entry.enter()
	if n, ok := c.ahead.read(p); ok {
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.ahead.after(p, n)
	return n, err
}

// admit moves the connection to admitted; false if it was closed already.
func (c *trackedConn) admit() bool { return c.state.CompareAndSwap(connOpen, connAdmitted) }

func (c *trackedConn) Close() error {
	if c.state.Swap(connClosed) == connAdmitted {
		c.s.admitted.Add(-1)
	}
	return c.Conn.Close()
}

// baseConn finds the trackedConn under a client's connection, or nil (the
// inline client, test doubles).
func baseConn(c net.Conn) *trackedConn {
	for c != nil {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		case *wsConn:
			c = v.Conn
		default:
			return nil
		}
	}
	return nil
}

// tlsConn finds the TLS layer of a client's connection, or nil.
func tlsConn(c net.Conn) *tls.Conn {
	for c != nil {
		switch v := c.(type) {
		case *tls.Conn:
			return v
		case *wsConn:
			c = v.Conn
		default:
			return nil
		}
	}
	return nil
}

// wsListener serves HTTP on its own listener, upgrades requests on any path
// to WebSocket (subprotocol "mqtt") and yields each as a net.Conn carrying
// the MQTT byte stream in binary messages.
type wsListener struct {
	s        *Server
	inner    net.Listener // where the HTTP server accepts (trackedListener, maybe under TLS)
	srv      *http.Server
	upgrader websocket.Upgrader
	conns    chan *wsConn
	done     chan struct{}
	served   chan struct{} // closed when the HTTP server's goroutine returned
	close    sync.Once
}

// Buffer sizes of a WebSocket connection: reads go through a buffer the
// size of mochi's for TCP (server.go); a write buffer holds a whole ack or
// command, and gorilla sends a longer message in one frame from the
// caller's slice anyway.
const (
	wsReadBufferSize  = 1024
	wsWriteBufferSize = 1024
)

func newWSListener(s *Server, inner net.Listener, handshakeTimeout time.Duration, errorLog *log.Logger) *wsListener {
	l := &wsListener{
		s:     s,
		inner: inner,
		upgrader: websocket.Upgrader{
			Subprotocols:     []string{"mqtt"},
			HandshakeTimeout: handshakeTimeout,
			// Left at zero, the connection would keep the HTTP server's
			// 4 KiB read and write buffers for its lifetime. It reads
			// through a buffer of the size mochi uses for TCP, and borrows
			// a write buffer from the pool only while writing a message:
			// an idle device holds none.
			ReadBufferSize:  wsReadBufferSize,
			WriteBufferSize: wsWriteBufferSize,
			WriteBufferPool: &sync.Pool{},
			// Devices and dashboards connect from anywhere; authentication
			// is MQTT's, not the browser's origin.
			CheckOrigin: func(*http.Request) bool { return true },
		},
		conns:  make(chan *wsConn),
		done:   make(chan struct{}),
		served: make(chan struct{}),
	}
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.upgrade),
		ReadHeaderTimeout: handshakeTimeout,
		ErrorLog:          errorLog,
	}
	go func() {
		defer close(l.served)
		_ = l.srv.Serve(inner)
	}()
	return l
}

func (l *wsListener) upgrade(w http.ResponseWriter, r *http.Request) {
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered with an HTTP error
	}
	conn := &wsConn{Conn: c.UnderlyingConn(), ws: c, entry: &handoff{s: l.s}}
	// The upgrade cleared the deadlines; the CONNECT is still due by the
	// time the TCP connection was accepted plus connect_timeout.
	if tc := baseConn(conn); tc != nil {
		_ = conn.SetReadDeadline(tc.deadline)
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

func (l *wsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		l.s.handed.Add(1)
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the HTTP server (and any upgrade in progress); connections
// already handed to mochi are mochi's to close.
func (l *wsListener) Close() error {
	l.close.Do(func() {
		close(l.done)
		_ = l.srv.Close()
		<-l.served
	})
	return nil
}

func (l *wsListener) Addr() net.Addr { return l.inner.Addr() }

// wsConn is a WebSocket connection as a byte stream. Writes are one binary
// message each. mochi already writes under the client's lock; wmu makes
// the one-writer rule of the WebSocket library hold whoever writes.
type wsConn struct {
	net.Conn // the upgraded connection, for addresses and deadlines
	ws       *websocket.Conn
	r        io.Reader // the current message, or nil
	entry    *handoff
	wmu      sync.Mutex
}

// errTextMessage closes a WebSocket client that sends a text message: MQTT
// over WebSocket is binary only (MQTT 5 section 6).
var errTextMessage = errors.New("websocket text message: mqtt needs binary messages")

func (c *wsConn) Read(p []byte) (int, error) {
	c.entry.enter()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errTextMessage
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			err = nil
			if n == 0 {
				continue // an empty or finished message: read the next one
			}
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error { return c.ws.Close() }
