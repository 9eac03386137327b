package simulator

import (
	"context"
	"fmt"
	"testing"
)

func BenchmarkTruckNext(b *testing.B) {
	devs := testFleet(b, Options{Trucks: 1, Seed: 1})
	tr := newTruck(&devs[0], 1, 1)
	b.ReportAllocs()
	for b.Loop() {
		tr.next()
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
