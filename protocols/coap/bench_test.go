package coap

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// BenchmarkIngestUDP measures the server alone: 64 raw UDP clients, each
// with one confirmable POST outstanding, against a buffer that completes
// appends at once. b.N is the number of requests answered.
//
//	go test -run XXX -bench IngestUDP -benchmem ./protocols/coap/
func BenchmarkIngestUDP(b *testing.B) {
	s := startServer(b, Options{}, &syncBuffer{}, nil)
	addr, _ := s.Addr()
	ua, _ := net.ResolveUDPAddr("udp", addr)
	const clients = 64
	per := b.N/clients + 1
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for c := range clients {
		wg.Go(func() {
			conn, err := net.DialUDP("udp", nil, ua)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			resp := make([]byte, 1500)
			for i := range per {
				m := withPayload(msg(message.Confirmable, codes.POST, uint16(i), "tk", "/devices/sensor-"+string(rune('a'+c%26))+"/climate"), cfJSON,
					`{"device":"sensor-0001","seq":12345,"temperature_c":21.5,"humidity":40.1}`)
				conn.Write(encodeDatagram(m))
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.Read(resp); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}
