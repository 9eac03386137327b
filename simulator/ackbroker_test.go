package simulator

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// ackBroker is the least an MQTT broker can be for the simulator: it
// answers CONNECT, PINGREQ and QoS 1 PUBLISH and routes nothing, so that a
// benchmark against it measures the client. onPublish, when set, sees every
// PUBLISH (its first byte and the rest after the remaining length) before
// it is acknowledged; it runs on the connection's goroutine and must not
// keep body.
type ackBroker struct {
	ln        net.Listener
	onPublish func(header byte, body []byte)
	wg        sync.WaitGroup
}

// startAckBroker listens on a free loopback port until the test ends.
func startAckBroker(t testing.TB, onPublish func(header byte, body []byte)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ackBroker{ln: ln, onPublish: onPublish}
	b.wg.Go(b.accept)
	t.Cleanup(func() {
		ln.Close()
		b.wg.Wait()
	})
	return ln.Addr().String()
}

func (b *ackBroker) accept() {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		conns.Go(func() {
			defer nc.Close()
			_ = b.serve(nc)
		})
	}
}

// serve answers one client until it disconnects.
func (b *ackBroker) serve(nc net.Conn) error {
	r := bufio.NewReaderSize(nc, 64<<10)
	w := bufio.NewWriterSize(nc, 16<<10)
	var body []byte
	var version byte
	puback := []byte{0x40, 2, 0, 0}
	for {
		h, err := r.ReadByte()
		if err != nil {
			return err
		}
		n, err := binary.ReadUvarint(r)
		if err != nil || n > maxIncomingPacket {
			return errors.New("bad remaining length")
		}
		body = append(body[:0], make([]byte, n)...)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		switch h >> 4 {
		case 1: // CONNECT: protocol name "MQTT", then the level
			if len(body) < 7 {
				return errors.New("short CONNECT")
			}
			version = body[6]
			if version == mqttV5 {
				w.Write([]byte{0x20, 3, 0, 0, 0})
			} else {
				w.Write([]byte{0x20, 2, 0, 0})
			}
		case 3: // PUBLISH
			if b.onPublish != nil {
				b.onPublish(h, body)
			}
			if qos := h >> 1 & 3; qos == 1 && len(body) >= 2 {
				at := 2 + int(binary.BigEndian.Uint16(body))
				if at+2 > len(body) {
					return errors.New("short PUBLISH")
				}
				puback[2], puback[3] = body[at], body[at+1]
				w.Write(puback)
			}
		case 12: // PINGREQ
			w.Write([]byte{0xd0, 0})
		case 14: // DISCONNECT
			return w.Flush()
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}
