package coap

import (
	"bufio"
	"bytes"
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	tcpcoder "github.com/plgd-dev/go-coap/v3/tcp/coder"

	"github.com/iotgw/iotgw/gateway"
)

// syncBuffer completes every append before Append returns.
type syncBuffer struct{ n atomic.Int64 }

func (b *syncBuffer) Append(_ []byte, done func(error)) error { b.n.Add(1); done(nil); return nil }
func (b *syncBuffer) Read(ctx context.Context, _, _ int) ([]gateway.Entry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (b *syncBuffer) Commit(gateway.Offset) error { return nil }
func (b *syncBuffer) Close() error                { return nil }

// capturePeer is a UDP-like peer that records what is sent to it.
type capturePeer struct {
	mu   sync.Mutex
	sent [][]byte
}

func (p *capturePeer) endpoint() epKey {
	return epKey{addr: netip.MustParseAddrPort("192.0.2.1:5683"), tr: transportUDP}
}
func (p *capturePeer) identity() string      { return "" }
func (p *capturePeer) spoofable() bool       { return true }
func (p *capturePeer) stream() bool          { return false }
func (p *capturePeer) gone() <-chan struct{} { return nil }
func (p *capturePeer) send(b []byte) {
	p.mu.Lock()
	p.sent = append(p.sent, b)
	p.mu.Unlock()
}

func fuzzSeeds() [][]byte {
	seeds := [][]byte{
		encodeDatagram(withPayload(msg(message.Confirmable, codes.POST, 1, "tok", "/devices/d1/s"), cfJSON, `{"a":1}`)),
		encodeDatagram(withPayload(msg(message.NonConfirmable, codes.PUT, 2, "", "/devices/d1/s/x"), cfCBOR, "\xa1\x61\x61\x01")),
		encodeDatagram(withPayload(msg(message.Confirmable, codes.POST, 3, "t", "/devices/d1/s", uintOption(message.Block1, 0x0a)), cfSenMLCBOR, string(bytes.Repeat([]byte{0x80}, 64)))),
		encodeDatagram(withPayload(msg(message.Confirmable, codes.POST, 4, "t", "/devices/d1/s", uintOption(message.Block1, 0x11)), cfOctets, "end")),
		encodeDatagram(msg(message.Confirmable, codes.GET, 5, "ob", "/devices/d1/commands", uintOption(message.Observe, 0))),
		encodeDatagram(msg(message.Confirmable, codes.GET, 6, "ob", "/devices/d1/commands", uintOption(message.Observe, 1))),
		encodeDatagram(withPayload(msg(message.Confirmable, codes.POST, 7, "t", "/devices/d1/s", query("auth=x"), uintOption(message.Size1, 1<<30)), cfJSON, `1`)),
		encodeDatagram(message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: 8}),
		encodeDatagram(message.Message{Type: message.Reset, Code: codes.Empty, MessageID: 9}),
		{0x40, 0x02, 0x00, 0x0a, 0xff},                   // payload marker without payload
		{0x48, 0x02, 0x00, 0x0b},                         // token longer than the datagram
		{0x40, 0x02, 0x00, 0x0c, 0xdd, 0xff, 0xff, 0x00}, // option delta past the end
		{0x40, 0x02, 0x00, 0x0d, 0xbd, 0x01, 'a'},        // Uri-Path length past the end
	}
	return seeds
}

// FuzzDatagram feeds raw datagrams, each twice, to the UDP message layer:
// no panic, and nothing sent to the (spoofable) source is larger than what
// it sent.
func FuzzDatagram(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 4 {
			return // the listener drops these before the message layer
		}
		for _, auth := range []Authenticator{nil, &fakeAuth{passwords: map[string]string{"d1": "x"}}} {
			s, err := New(Options{UDP: Off, DedupEntries: 8, MaxPayload: 256}, &syncBuffer{}, auth, nil)
			if err != nil {
				t.Fatal(err)
			}
			p := &capturePeer{}
			s.handleDatagram(p, append([]byte(nil), b...))
			s.handleDatagram(p, append([]byte(nil), b...))
			for _, out := range p.sent {
				if len(out) > len(b) {
					t.Fatalf("answered %d bytes to a %d-byte datagram: %x -> %x", len(out), len(b), b, out)
				}
			}
			s.Close(context.Background())
		}
	})
}

// FuzzFrame feeds a byte stream to the RFC 8323 framing: no panic, and a
// frame that is read decodes or is refused.
func FuzzFrame(f *testing.F) {
	f.Add([]byte{0x10, 0xe1, 0x02, 0x04, 0x00, 0x00}) // CSM
	f.Add([]byte{0x00, 0xe2})                         // Ping
	f.Add([]byte{0xd1, 0x05, 0x02, 't', 0xb7, 'd', 'e', 'v', 'i', 'c', 'e', 's'})
	f.Add([]byte{0xe0, 0xff, 0xff, 0x02})             // too large
	f.Add([]byte{0xf9, 0x00, 0x00, 0x00, 0x00, 0x02}) // token length 9
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			frame, err := readFrame(r, 4096)
			if err != nil {
				return
			}
			m := message.Message{Options: make(message.Options, 0, maxOptions)}
			_, _ = tcpcoder.DefaultCoder.Decode(frame, &m)
		}
	})
}
