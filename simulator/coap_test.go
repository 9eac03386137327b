package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
)

// coapSink is a test CoAP server that records climate posts. respond picks
// the response for a request (nil: 2.04 Changed).
type coapSink struct {
	mu      sync.Mutex
	seqs    map[string][]uint64
	types   map[message.Type]int
	bad     []string
	respond func(device string, seq uint64, n int) (codes.Code, bool) // n: times this seq was seen; false: no answer yet
}

func (s *coapSink) handle(w mux.ResponseWriter, r *mux.Message) {
	path, _ := r.Path()
	cf, _ := r.ContentFormat()
	var body []byte
	if r.Body() != nil {
		body, _ = io.ReadAll(r.Body())
	}
	var p struct {
		Device string  `json:"device"`
		Seq    uint64  `json:"seq"`
		Temp   float64 `json:"temperature_c"`
	}
	err := json.Unmarshal(body, &p)
	s.mu.Lock()
	s.types[r.Type()]++
	if err != nil || r.Code() != codes.POST || cf != message.AppJSON || path != "/devices/"+p.Device+"/climate" || p.Seq == 0 {
		s.bad = append(s.bad, fmt.Sprintf("%v %s %v: %s", r.Code(), path, cf, body))
		s.mu.Unlock()
		_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
		return
	}
	n := 1
	for _, q := range s.seqs[p.Device] {
		if q == p.Seq {
			n++
		}
	}
	s.seqs[p.Device] = append(s.seqs[p.Device], p.Seq)
	s.mu.Unlock()
	code := codes.Changed
	if s.respond != nil {
		c, answer := s.respond(p.Device, p.Seq, n)
		if !answer {
			return
		}
		code = c
	}
	if code == codes.ServiceUnavailable {
		_ = w.SetResponse(code, message.TextPlain, nil, message.Option{ID: message.MaxAge, Value: []byte{}})
		return
	}
	_ = w.SetResponse(code, message.TextPlain, nil)
}

func newCoAPSink() *coapSink {
	return &coapSink{seqs: map[string][]uint64{}, types: map[message.Type]int{}}
}

// startCoAP serves the sink on a free loopback UDP port.
func startCoAP(t testing.TB, sink *coapSink) string {
	t.Helper()
	l, err := coapnet.NewListenUDP("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	r.DefaultHandle(mux.HandlerFunc(sink.handle))
	s := udp.NewServer(options.WithMux(r))
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Serve(l) })
	t.Cleanup(func() {
		s.Stop()
		wg.Wait()
		l.Close()
	})
	return l.LocalAddr().String()
}

// check verifies the sink got every seq 1..n of each sensor in order, each
// at least once.
func (s *coapSink) check(t testing.TB, sensors int, n uint64) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) > 0 {
		t.Fatalf("%d bad requests, first: %s", len(s.bad), s.bad[0])
	}
	for i := 1; i <= sensors; i++ {
		id := deviceID(KindSensor, i)
		var seen SeqSet
		var top uint64
		for _, q := range s.seqs[id] {
			if seen.Add(q) {
				if q < top {
					t.Fatalf("%s: seq %d after %d", id, q, top)
				}
				top = q
			}
		}
		if seen.Len() != n || seen.Max() != n {
			t.Fatalf("%s: got seqs %s, want 1-%d", id, seen.String(), n)
		}
	}
}

func TestRunCoAP(t *testing.T) {
	for _, typ := range []string{"con", "non"} {
		t.Run(typ, func(t *testing.T) {
			sink := newCoAPSink()
			addr := startCoAP(t, sink)
			const sensors, msgs = 3, 30
			rep, err := Run(context.Background(), Options{
				CoAP: addr, Sensors: sensors, Messages: msgs, CoAPType: typ, Seed: 2,
			})
			if err != nil {
				t.Fatal(err)
			}
			sink.check(t, sensors, msgs)
			if rep.Sent != sensors*msgs || rep.Acked != sensors*msgs || rep.Errors != 0 || rep.Retries != 0 {
				t.Fatalf("report: %+v", rep)
			}
			want := message.Confirmable
			if typ == "non" {
				want = message.NonConfirmable
			}
			if sink.types[want] != sensors*msgs {
				t.Fatalf("message types %v, want %d of %v", sink.types, sensors*msgs, want)
			}
			if d := rep.Devices["sensor-0002"]; d.LastAcked != msgs || d.Acked.Len() != msgs {
				t.Fatalf("sensor-0002: %+v", d)
			}
		})
	}
}

// TestRunCoAPRefusedAndRetried: every seventh post gets 5.03, and the
// first try of seq 5 gets no answer in time, so it is sent again.
func TestRunCoAPRefusedAndRetried(t *testing.T) {
	sink := newCoAPSink()
	sink.respond = func(_ string, seq uint64, n int) (codes.Code, bool) {
		switch {
		case seq == 5 && n == 1:
			return 0, false
		case seq%7 == 0:
			return codes.ServiceUnavailable, true
		}
		return codes.Created, true
	}
	addr := startCoAP(t, sink)
	rep, err := Run(context.Background(), Options{
		CoAP: addr, Sensors: 1, Messages: 30, AckTimeout: 300 * time.Millisecond,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	sink.check(t, 1, 30)
	if rep.Sent != 30 || rep.Acked != 26 || rep.Refused != 4 || rep.Retries != 1 || rep.Errors != 1 {
		t.Fatalf("sent %d acked %d refused %d retries %d errors %d", rep.Sent, rep.Acked, rep.Refused, rep.Retries, rep.Errors)
	}
	if got := rep.Devices["sensor-0001"].Acked.String(); got != "1-6,8-13,15-20,22-27,29-30" {
		t.Fatalf("acked %s", got)
	}
}

func TestRunCoAPDTLS(t *testing.T) {
	var mu sync.Mutex
	identities := map[string]bool{}
	l, err := coapnet.NewDTLSListener("udp4", "127.0.0.1:0", &piondtls.Config{
		PSK: func(identity []byte) ([]byte, error) {
			mu.Lock()
			identities[string(identity)] = true
			mu.Unlock()
			return []byte("key-" + string(identity)), nil
		},
		PSKIdentityHint: []byte("iotgw-test"),
		CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
	})
	if err != nil {
		t.Fatal(err)
	}
	sink := newCoAPSink()
	r := mux.NewRouter()
	r.DefaultHandle(mux.HandlerFunc(sink.handle))
	s := coapdtls.NewServer(options.WithMux(r))
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Serve(l) })
	defer func() {
		s.Stop()
		wg.Wait()
		l.Close()
	}()

	rep, err := Run(context.Background(), Options{
		CoAP: l.Addr().String(), Sensors: 2, Messages: 10, CoAPPSK: "key-{device}",
	})
	if err != nil {
		t.Fatal(err)
	}
	sink.check(t, 2, 10)
	if rep.Acked != 20 || rep.Errors != 0 {
		t.Fatalf("acked %d errors %d", rep.Acked, rep.Errors)
	}
	// The server calls PSK on its handshake goroutines, which Run does not
	// wait for.
	mu.Lock()
	if !identities["sensor-0001"] || !identities["sensor-0002"] {
		t.Errorf("PSK identities %v", identities)
	}
	mu.Unlock()
	// A wrong key fails the handshake: errors, nothing sent.
	rep, err = Run(context.Background(), Options{
		CoAP: l.Addr().String(), Sensors: 1, Duration: 300 * time.Millisecond, CoAPPSK: "wrong",
		ConnectTimeout: 100 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 40 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 0 || rep.Errors == 0 {
		t.Fatalf("wrong key: sent %d errors %d", rep.Sent, rep.Errors)
	}
	var out bytes.Buffer
	rep.Print(&out)
	if !strings.Contains(out.String(), "CoAP con") {
		t.Errorf("Print: %s", out.String())
	}
}
