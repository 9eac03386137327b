package mqtt

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/gateway"
)

// doneBuffer stores nothing and completes each append at once, in batches
// on a goroutine of its own as the durable log's writer does: what is left
// is the publish path itself (mochi's read and decode, the hook, the ack
// queue and the PUBACK writes).
type doneBuffer struct {
	mu      sync.Mutex
	pending []func(error)
	wake    chan struct{}
}

func newDoneBuffer(ctx context.Context) *doneBuffer {
	b := &doneBuffer{wake: make(chan struct{}, 1)}
	go func() {
		var batch []func(error)
		for {
			select {
			case <-ctx.Done():
				return
			case <-b.wake:
			}
			b.mu.Lock()
			batch, b.pending = b.pending, batch[:0]
			b.mu.Unlock()
			for _, done := range batch {
				done(nil)
			}
		}
	}()
	return b
}

func (b *doneBuffer) Append(_ []byte, done func(error)) error {
	b.mu.Lock()
	b.pending = append(b.pending, done)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return nil
}
func (b *doneBuffer) Read(ctx context.Context, _, _ int) ([]gateway.Entry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (b *doneBuffer) Commit(gateway.Offset) error { return nil }
func (b *doneBuffer) Close() error                { return nil }

// BenchmarkPublishQoS1 is one MQTT 5 client publishing QoS 1 messages of
// the simulator's size over loopback, 100 in flight: time and allocations
// per publish, acked.
func BenchmarkPublishQoS1(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startWith(b, Options{}, newDoneBuffer(ctx), nil, nil)
	c, code := dial(b, s, 5, "truck-0001", "", "")
	if code != 0 {
		b.Fatalf("connack %x", code)
	}
	const window = 100
	payload := `{"device":"truck-0001","seq":1846,"ts":"2026-11-26T05:50:37.464560421Z","run":"bench","lat":53.551086,"lon":9.993682,"speed_kmh":81.4,"heading":212.5,"odometer_km":10231.7}`
	var chunk []byte
	for i := 1; i <= window; i++ {
		chunk = append(chunk, encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			ProtocolVersion: 5, TopicName: "devices/truck-0001/position", PacketID: uint16(i), Payload: []byte(payload)})...)
	}
	acks := make([]byte, 4*window)      // PUBACK: 0x40 0x02 id id
	c.conn.SetReadDeadline(time.Time{}) // dial's deadline would end a long run
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += window {
		if _, err := c.conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c.r, acks); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if acks[0] != packets.Puback<<4 || acks[len(acks)-1] != window {
		b.Fatalf("acks % x", acks[len(acks)-4:])
	}
}
