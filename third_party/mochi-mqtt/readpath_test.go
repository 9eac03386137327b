// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: iotgw

package mqtt

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/stretchr/testify/require"
)

// ingestHook sees every packet read (OnPacketRead) and every publish
// (OnPublish), as a hook that stores or forwards messages does, and passes
// them through.
type ingestHook struct {
	HookBase
}

func (h *ingestHook) ID() string { return "ingest" }

func (h *ingestHook) Provides(b byte) bool {
	return b == OnPacketRead || b == OnPublish
}

func (h *ingestHook) OnPacketRead(cl *Client, pk packets.Packet) (packets.Packet, error) {
	return pk, nil
}

func (h *ingestHook) OnPublish(cl *Client, pk packets.Packet) (packets.Packet, error) {
	return pk, nil
}

// benchPublish returns an MQTT 5 QoS 1 PUBLISH as devices send telemetry:
// a topic of 26 bytes, payload format and content type properties, a JSON
// payload of 200 bytes. Its packet id is at idAt.
func benchPublish() (pk []byte, idAt int) {
	p := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "devices/sim-0042/telemetry",
		PacketID:    1,
		Properties: packets.Properties{
			PayloadFormat:     1,
			PayloadFormatFlag: true,
			ContentType:       "application/json",
		},
		Payload:         bytes.Repeat([]byte(`{"t":21.5}`), 20),
		ProtocolVersion: 5,
	}
	var buf bytes.Buffer
	if err := p.PublishEncode(&buf); err != nil {
		panic(err)
	}
	pk = buf.Bytes()
	// after the fixed header (a byte, and 2 for a remaining length between
	// 128 and 16383), the topic's length and the topic
	idAt = 1 + 2 + 2 + len(p.TopicName)
	if pk[idAt] != 0 || pk[idAt+1] != 1 {
		panic("packet id not where expected")
	}
	return pk, idAt
}

// TestServerKeepaliveDeadline checks the keepalive timeout as the server
// sets it, a little late so as not to set it for every packet (see
// Client.refreshDeadline): a client that keeps sending, for longer than the
// timeout, is not disconnected, and a client that falls silent is
// disconnected 1.5 times the keepalive after its last packet, never
// earlier, and at most the slack later (plus scheduling).
func TestServerKeepaliveDeadline(t *testing.T) {
	s := New(&Options{Logger: logger})
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, s.AddListener(listeners.NewNet("keepalive", ln)))
	require.NoError(t, s.Serve())
	defer s.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	// MQTT 3.1.1 CONNECT, clean session, keep-alive 2 s (a timeout of 3 s,
	// a slack of 300 ms), the server assigns the client id.
	exchange(t, c, r, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 2, 0, 0}, packets.Connack)

	const timeout, slack = 3 * time.Second, 300 * time.Millisecond
	var last time.Time
	for start := time.Now(); time.Since(start) < timeout+time.Second; {
		time.Sleep(100 * time.Millisecond)
		last = time.Now()
		exchange(t, c, r, []byte{0xc0, 0}, packets.Pingresp)
	}

	require.NoError(t, c.SetReadDeadline(time.Now().Add(timeout+5*time.Second)))
	_, err = r.ReadByte()
	silent := time.Since(last)
	require.ErrorIs(t, err, io.EOF) // disconnected by the server, not by our read deadline
	require.GreaterOrEqual(t, silent, timeout)
	require.Less(t, silent, timeout+slack+500*time.Millisecond)
	t.Logf("disconnected %v after the last packet", silent)
}

// repeatReader reads the same bytes over and over.
type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// BenchmarkClientReadPublish reads and decodes QoS 1 publishes as the
// server's read loop does, less the keepalive deadline: the fixed header,
// the body, and the OnPacketRead hooks.
func BenchmarkClientReadPublish(b *testing.B) {
	cl, _, _ := newTestClient()
	cl.Properties.ProtocolVersion = 5
	require.NoError(b, cl.ops.hooks.Add(new(ingestHook), nil))
	pk, _ := benchPublish()
	cl.Net.bconn = bufio.NewReaderSize(&repeatReader{b: pk}, 2048)

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var fh packets.FixedHeader
		if err := cl.ReadFixedHeader(&fh); err != nil {
			b.Fatal(err)
		}
		var p packets.Packet
		if err := cl.readPacket(&fh, &p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientRefreshDeadline refreshes the keepalive deadline of a
// TCP connection, as the server does before reading each packet.
func BenchmarkClientRefreshDeadline(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer c.Close()
	cl, _, _ := newTestClient()
	cl.Net.Conn = c

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cl.refreshDeadline(60)
	}
}

// BenchmarkServerReceivePublishQos1 measures the server's whole read path
// for QoS 1 publishes: one MQTT 5 client over loopback TCP keeps 100
// publishes in flight and reads the PUBACKs. The client writes prepared
// bytes and skips over the acks; most of the time goes to system calls
// (the server writes each PUBACK with one).
func BenchmarkServerReceivePublishQos1(b *testing.B) {
	s := New(&Options{Logger: logger})
	require.NoError(b, s.AddHook(new(AllowHook), nil))
	require.NoError(b, s.AddHook(new(ingestHook), nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	require.NoError(b, s.AddListener(listeners.NewNet("bench", ln)))
	require.NoError(b, s.Serve())
	defer s.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer c.Close()
	r := bufio.NewReader(c)
	// MQTT 5 CONNECT, clean start, keep-alive 60 s, no properties, client id "bench".
	exchange(b, c, r, []byte{0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, 5, 'b', 'e', 'n', 'c', 'h'}, packets.Connack)
	require.NoError(b, c.SetReadDeadline(time.Time{}))

	const window = 100
	pk, idAt := benchPublish()
	tokens := make(chan struct{}, window)
	for i := 0; i < window; i++ {
		tokens <- struct{}{}
	}
	failed := make(chan error, 1)

	b.ReportAllocs()
	b.SetBytes(int64(len(pk)))
	b.ResetTimer()
	go func() {
		w := bufio.NewWriterSize(c, 16<<10)
		for i := 0; i < b.N; i++ {
			select {
			case <-tokens:
			default:
				if err := w.Flush(); err != nil {
					failed <- err
					return
				}
				<-tokens
			}
			id := uint16(i%65535 + 1)
			pk[idAt], pk[idAt+1] = byte(id>>8), byte(id)
			_, _ = w.Write(pk)
		}
		if err := w.Flush(); err != nil {
			failed <- err
		}
	}()
	for i := 0; i < b.N; i++ {
		typ, err := r.ReadByte()
		if err != nil {
			b.Fatal(err)
		}
		if typ>>4 != packets.Puback {
			b.Fatalf("got packet type %d, want a puback", typ>>4)
		}
		n, _, err := packets.DecodeLength(r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.Discard(n); err != nil {
			b.Fatal(err)
		}
		tokens <- struct{}{}
	}
	b.StopTimer()
	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
}
