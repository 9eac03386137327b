package coap

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/options"
)

func TestDbgDTLS(t *testing.T) {
	auth := &fakeAuth{psks: map[string]string{"sensor-1": "secret-key-1"}}
	s, _ := New(Options{UDP: "off", DTLS: "127.0.0.1:0"}, &heldBuffer{auto: true}, auth, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	s.Start(context.Background())
	defer s.Close(context.Background())
	addr, _ := s.DTLSAddr()
	start := time.Now()
	bc, err := coapdtls.Dial(addr, &piondtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte("wrong"), nil },
		PSKIdentityHint: []byte("sensor-1"),
		CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
	}, options.WithErrors(func(error) {}))
	t.Log("dial", err, time.Since(start))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = bc.Post(ctx, "/devices/sensor-1/climate", message.AppJSON, bytes.NewReader([]byte(`1`)))
		cancel()
		t.Log("post", err, time.Since(start))
	}
	for i := 0; i < 120 && s.Stats().AuthFailures == 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	t.Log("failures", s.Stats().AuthFailures, time.Since(start))
}
