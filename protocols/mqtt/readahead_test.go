package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, the server's
// wrapped as the listener wraps it.
func tcpPair(t *testing.T) (client net.Conn, server *trackedConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server = &trackedConn{Conn: c}
	server.ahead.raw, _ = c.(syscall.Conn).SyscallConn()
	t.Cleanup(func() { client.Close(); c.Close() })
	return client, server
}

// TestReadAheadKeepsTheStream sends bursts and trickles of random sizes and
// reads them through mochi's small reader: every byte arrives in order, and
// the bursts were read ahead.
func TestReadAheadKeepsTheStream(t *testing.T) {
	client, server := tcpPair(t)
	r := rand.New(rand.NewPCG(7, 8))
	want := make([]byte, 4<<20)
	for i := range want {
		want[i] = byte(r.Uint32())
	}
	go func() {
		w := rand.New(rand.NewPCG(9, 10))
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 1+w.IntN(40<<10))
			if w.IntN(4) == 0 {
				n = min(len(rest), 1+w.IntN(300)) // a device's single message
			}
			if _, err := client.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
			if w.IntN(8) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		client.Close()
	}()
	br := bufio.NewReaderSize(server, 1024) // as mochi reads a client
	var got bytes.Buffer
	reads := 0
	buf := make([]byte, 600)
	for {
		n, err := br.Read(buf[:1+r.IntN(len(buf))])
		got.Write(buf[:n])
		reads++
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not the %d sent (first difference at %d)", got.Len(), len(want), firstDiff(got.Bytes(), want))
	}
	if server.ahead.buf != nil {
		t.Error("a read-ahead buffer is still held at the end of the stream")
	}
	if server.ahead.aheadReads == 0 {
		t.Error("no read went ahead")
	}
	t.Logf("%d reads ahead, %d direct", server.ahead.aheadReads, server.ahead.directReads)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestReadAheadIdleHoldsNothing: after a burst, a connection that waits for
// its next message holds no read-ahead buffer, and a deadline still ends
// that wait.
func TestReadAheadIdleHoldsNothing(t *testing.T) {
	client, server := tcpPair(t)
	burst := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if _, err := client.Write(burst); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(server, 1024)
	got := make([]byte, len(burst))
	for off := 0; off < len(got); off += 256 { // packet by packet, as mochi reads
		if _, err := io.ReadFull(br, got[off:off+256]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, burst) {
		t.Fatal("burst corrupted")
	}
	if server.ahead.aheadReads == 0 {
		t.Fatal("the burst was not read ahead")
	}
	server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := br.ReadByte()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle read: %v, want a deadline error", err)
	}
	if server.ahead.buf != nil || server.ahead.streaming {
		t.Fatalf("idle connection holds a buffer (%v) or still streams (%v)", server.ahead.buf != nil, server.ahead.streaming)
	}
	// And it picks up where it was.
	server.SetReadDeadline(time.Time{})
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := br.ReadByte(); err != nil || b != 'x' {
		t.Fatalf("after idle: %q, %v", b, err)
	}
}
