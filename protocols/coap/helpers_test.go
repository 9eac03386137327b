package coap

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpcoder "github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// heldBuffer completes appends only when the test releases them, and can be
// switched to full; it records what was appended.
type heldBuffer struct {
	mu      sync.Mutex
	full    bool
	auto    bool // complete every append at once
	pending []func(error)
	data    [][]byte
}

func (b *heldBuffer) Append(data []byte, done func(error)) error {
	b.mu.Lock()
	if b.full {
		b.mu.Unlock()
		return gateway.ErrFull
	}
	b.data = append(b.data, bytes.Clone(data)) // the caller may reuse data
	if b.auto {
		b.mu.Unlock()
		go done(nil)
		return nil
	}
	b.pending = append(b.pending, done)
	b.mu.Unlock()
	return nil
}

func (b *heldBuffer) release(err error) int {
	b.mu.Lock()
	p := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, done := range p {
		done(err)
	}
	return len(p)
}

func (b *heldBuffer) setFull(v bool) { b.mu.Lock(); b.full = v; b.mu.Unlock() }
func (b *heldBuffer) setAuto(v bool) { b.mu.Lock(); b.auto = v; b.mu.Unlock() }
func (b *heldBuffer) appended() int  { b.mu.Lock(); defer b.mu.Unlock(); return len(b.data) }
func (b *heldBuffer) waiting() int   { b.mu.Lock(); defer b.mu.Unlock(); return len(b.pending) }

func (b *heldBuffer) record(t *testing.T, i int) gateway.Record {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if i >= len(b.data) {
		t.Fatalf("record %d of %d", i, len(b.data))
	}
	var rec gateway.Record
	if err := gateway.DecodeRecord(b.data[i], &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func (b *heldBuffer) Read(ctx context.Context, _, _ int) ([]gateway.Entry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (b *heldBuffer) Commit(gateway.Offset) error { return nil }
func (b *heldBuffer) Close() error                { return nil }

// fakeAuth is a registry with passwords and PSKs.
type fakeAuth struct {
	passwords map[string]string
	psks      map[string]string
	down      bool

	mu     sync.Mutex
	status map[string]bool
}

func (f *fakeAuth) Authenticate(_ context.Context, id, password string) error {
	if f.down {
		return errors.New("registry unreachable")
	}
	if p, ok := f.passwords[id]; ok && p == password {
		return nil
	}
	return devices.ErrBadCredentials
}

func (f *fakeAuth) PSK(_ context.Context, id string) ([]byte, error) {
	if k, ok := f.psks[id]; ok {
		return []byte(k), nil
	}
	return nil, devices.ErrUnknownDevice
}

func (f *fakeAuth) SetStatus(_ context.Context, id string, online bool, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status == nil {
		f.status = map[string]bool{}
	}
	f.status[id] = online
	return nil
}

func (f *fakeAuth) online(id string) (bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.status[id]
	return v, ok
}

func startServer(t testing.TB, opts Options, buf gateway.Buffer, auth Authenticator) *Server {
	t.Helper()
	if opts.UDP == "" {
		opts.UDP = "127.0.0.1:0"
	}
	s, err := New(opts, buf, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// rawClient speaks CoAP over UDP byte by byte, so tests control message ids
// and see every datagram.
type rawClient struct {
	t    testing.TB
	conn *net.UDPConn
}

func dialRaw(t testing.TB, s *Server) *rawClient {
	t.Helper()
	addr, err := s.Addr()
	if err != nil {
		t.Fatal(err)
	}
	ua, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c}
}

// msg builds a request datagram.
func msg(typ message.Type, code codes.Code, mid uint16, token string, path string, opts ...message.Option) message.Message {
	m := message.Message{Type: typ, Code: code, MessageID: int32(mid), Token: []byte(token)}
	if path != "" {
		m.Options, _, _ = m.Options.SetPath(make([]byte, 256), path)
	}
	for _, o := range opts {
		m.Options = m.Options.Add(o)
	}
	return m
}

func withPayload(m message.Message, cf uint32, payload string) message.Message {
	m.Options = m.Options.Add(uintOption(message.ContentFormat, cf))
	m.Payload = []byte(payload)
	return m
}

func query(q string) message.Option { return message.Option{ID: message.URIQuery, Value: []byte(q)} }

func (c *rawClient) sendRaw(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// send encodes m and returns the datagram sent.
func (c *rawClient) send(m message.Message) []byte {
	c.t.Helper()
	b := encodeDatagram(m)
	if b == nil {
		c.t.Fatalf("cannot encode %v", m)
	}
	c.sendRaw(b)
	return b
}

// read returns the next datagram decoded, with its size.
func (c *rawClient) read(timeout time.Duration) (message.Message, int, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	n, err := c.conn.Read(buf)
	if err != nil {
		return message.Message{}, 0, err
	}
	m := message.Message{Options: make(message.Options, 0, 16)}
	if _, err := udpcoder.DefaultCoder.Decode(buf[:n], &m); err != nil {
		return message.Message{}, n, err
	}
	return m, n, nil
}

func (c *rawClient) expect(timeout time.Duration) (message.Message, int) {
	c.t.Helper()
	m, n, err := c.read(timeout)
	if err != nil {
		c.t.Fatalf("no answer: %v", err)
	}
	return m, n
}

func (c *rawClient) expectNothing(d time.Duration) {
	c.t.Helper()
	if m, _, err := c.read(d); err == nil {
		c.t.Fatalf("unexpected %v %v mid %d", m.Type, m.Code, m.MessageID)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
