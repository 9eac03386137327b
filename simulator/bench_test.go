package simulator

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

func BenchmarkTruckNext(b *testing.B) {
	devs := testFleet(b, Options{Trucks: 1, Seed: 1})
	tr := newTruck(&devs[0], 1, 1)
	b.ReportAllocs()
	for b.Loop() {
		tr.next()
	}
}

// discardConn is a connection whose writes vanish.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkPublish is one truck's work per QoS 1 MQTT 5 message, without
// the network and the broker, on one goroutine: generate the message,
// encode and write the PUBLISH, read its PUBACK and record the ack, with
// 90 to 100 publishes in flight.
func BenchmarkPublish(b *testing.B) {
	o := Options{Trucks: 1, Seed: 1}.WithDefaults()
	roads, err := loadRoutes("")
	if err != nil {
		b.Fatal(err)
	}
	devs := buildFleet(o, roads)
	env := &runEnv{opts: o, version: mqttV5, qos: 1, runID: "20260102T030405.000Z", stats: &stats{}, log: o.logger()}
	d := newMQTTDevice(env, &devs[0], &DeviceResult{})
	var acks bytes.Buffer
	c := &mqttConn{
		nc: discardConn{}, r: bufio.NewReaderSize(&acks, 16<<10), w: bufio.NewWriterSize(discardConn{}, 32<<10),
		version: mqttV5, window: 100, ackTO: o.AckTimeout,
	}
	const window, batch = 100, 10
	var sent uint64
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		if err := d.watchdog(c, now, d.flight().oldest); err != nil {
			b.Fatal(err)
		}
		if err := d.publish(c, now); err != nil {
			b.Fatal(err)
		}
		sent++
		if sent >= window && sent%batch == 0 {
			for seq := sent - window + 1; seq <= sent-window+batch; seq++ {
				id := uint16((seq-1)%65535 + 1)
				acks.Write([]byte{0x40, 2, byte(id >> 8), byte(id)})
			}
			if err := d.readLoop(c); err != io.EOF {
				b.Fatalf("read acks: %v", err)
			}
		}
	}
	if got := env.stats.acked.Load(); got < int64(sent)-window {
		b.Fatalf("acked %d of %d", got, sent)
	}
}

// BenchmarkPublishAck runs trucks against ackBroker on loopback with QoS 1,
// MQTT 5 and 100 publishes in flight, the shape of the gateway's end-to-end
// benchmark; b.N is the number of messages. cpu-ns/msg is the CPU time of
// the whole process, the broker's small share included, per message:
//
//	go test -run XXX -bench PublishAck -benchmem ./simulator/
func BenchmarkPublishAck(b *testing.B) {
	for _, trucks := range []int{1, 50} {
		b.Run(fmt.Sprintf("trucks=%d", trucks), func(b *testing.B) {
			addr := startAckBroker(b, nil)
			per := max(1, b.N/trucks)
			b.ReportAllocs()
			cpu := processCPU()
			b.ResetTimer()
			rep, err := Run(context.Background(), Options{
				Broker: addr, Trucks: trucks, Messages: per, QoS: QoS(1), Protocol: "5", InFlight: 100,
			})
			b.StopTimer()
			cpu = processCPU() - cpu
			if err != nil {
				b.Fatal(err)
			}
			if rep.Acked != int64(per*trucks) || rep.Errors != 0 {
				b.Fatalf("acked %d of %d, errors %d", rep.Acked, per*trucks, rep.Errors)
			}
			if cpu > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(per*trucks), "cpu-ns/msg")
			}
		})
	}
}

// BenchmarkMQTT measures acked QoS 1 messages per second against a bare
// mochi broker (open auth, no other hooks) on loopback, with 100 publishes
// in flight per connection. b.N is the total number of messages:
//
//	go test -run XXX -bench MQTT -benchtime 300000x ./simulator/
func BenchmarkMQTT(b *testing.B) {
	for _, conns := range []int{1, 100} {
		for _, proto := range []string{"3.1.1", "5"} {
			b.Run(fmt.Sprintf("conns=%d/v%s", conns, proto), func(b *testing.B) {
				_, addr := startBroker(b, false)
				per := max(1, b.N/conns)
				b.ResetTimer()
				rep, err := Run(context.Background(), Options{
					Broker: addr, Trucks: conns, Messages: per, QoS: QoS(1), Protocol: proto, InFlight: 100,
				})
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if rep.Acked != int64(per*conns) || rep.Errors != 0 {
					b.Fatalf("acked %d of %d, errors %d", rep.Acked, per*conns, rep.Errors)
				}
				b.ReportMetric(rep.Throughput, "acked/s")
				b.ReportMetric(float64(rep.LatencyP50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(rep.LatencyP99.Microseconds())/1000, "p99-ms")
			})
		}
	}
}
