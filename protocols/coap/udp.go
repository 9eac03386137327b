package coap

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
)

const (
	// maxDatagram is the largest UDP datagram read; CoAP over UDP is
	// limited by the IP datagram, and bigger bodies use Block1.
	maxDatagram = 65535
	// endpointQueue bounds the datagrams of one endpoint waiting for the
	// ones before them; past it new ones are dropped like an overflowing
	// socket buffer would (a confirmable sender retransmits).
	endpointQueue = 64
	// maxBusyEndpoints bounds the endpoints with datagrams being handled
	// at once, and so the goroutines handling them.
	maxBusyEndpoints = 16384
	// socketBuffer is the UDP socket buffer asked for, each way.
	socketBuffer = 4 << 20
)

// udpListener reads datagrams on one goroutine and hands each endpoint's
// datagrams, in arrival order, to a goroutine of that endpoint's own, which
// exists only while the endpoint has datagrams waiting. Order per endpoint
// keeps a device's non-confirmable messages in order; one goroutine per
// busy endpoint keeps a slow registry lookup for one device from holding
// up the others.
type udpListener struct {
	s    *Server
	conn *net.UDPConn

	mu   sync.Mutex
	busy map[netip.AddrPort]*udpEndpoint
}

type udpEndpoint struct {
	peer    udpPeer
	pending [][]byte
}

// udpPeer is a device behind a UDP address.
type udpPeer struct {
	l    *udpListener
	addr netip.AddrPort
}

func (p udpPeer) endpoint() epKey       { return epKey{addr: p.addr, tr: transportUDP} }
func (p udpPeer) identity() string      { return "" }
func (p udpPeer) spoofable() bool       { return true }
func (p udpPeer) stream() bool          { return false }
func (p udpPeer) gone() <-chan struct{} { return nil }
func (p udpPeer) send(b []byte)         { p.l.s.out.push(datagram{udp: p.l.conn, addr: p.addr, b: b}) }

func (s *Server) listenUDP(ctx context.Context, addr string) (*udpListener, error) {
	pc, err := (&net.ListenConfig{}).ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	// Many devices answering at once overflow the default socket buffer
	// (about 200 datagrams on Linux) and the kernel drops the rest; they
	// are retransmitted seconds later. The kernel caps this at
	// net.core.rmem_max.
	_ = conn.SetReadBuffer(socketBuffer)
	_ = conn.SetWriteBuffer(socketBuffer)
	l := &udpListener{s: s, conn: conn, busy: map[netip.AddrPort]*udpEndpoint{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		l.read()
	}()
	return l, nil
}

func (l *udpListener) read() {
	buf := make([]byte, maxDatagram)
	for {
		n, addr, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors surface here on some systems; they end nothing.
			l.s.log.Debug("udp read", "error", err)
			continue
		}
		if n < 4 {
			l.s.stats.malformed.Add(1)
			continue
		}
		l.dispatch(addr, append([]byte(nil), buf[:n]...))
	}
}

func (l *udpListener) dispatch(addr netip.AddrPort, b []byte) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	l.mu.Lock()
	e := l.busy[addr]
	if e == nil {
		if len(l.busy) >= maxBusyEndpoints {
			l.mu.Unlock()
			l.s.stats.dropped.Add(1)
			return
		}
		e = &udpEndpoint{peer: udpPeer{l: l, addr: addr}}
		l.busy[addr] = e
		l.s.wg.Add(1)
		go l.drain(e)
	} else if len(e.pending) >= endpointQueue {
		l.mu.Unlock()
		l.s.stats.dropped.Add(1)
		return
	}
	e.pending = append(e.pending, b)
	l.mu.Unlock()
}

// drain handles one endpoint's datagrams until none is left, then removes
// the endpoint.
func (l *udpListener) drain(e *udpEndpoint) {
	defer l.s.wg.Done()
	for {
		l.mu.Lock()
		if len(e.pending) == 0 {
			delete(l.busy, e.peer.addr)
			l.mu.Unlock()
			return
		}
		b := e.pending[0]
		e.pending[0] = nil
		e.pending = e.pending[1:]
		l.mu.Unlock()
		l.s.handleDatagram(e.peer, b)
	}
}
