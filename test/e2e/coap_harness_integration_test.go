//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/coap"
)

// coapGateway is the CoAP front door with the real durable log and the
// real egress pipeline to Kafka, in this process: what `iotgw run` does
// for CoAP once gateway/app wires it (see TestCoapBinary for that).
type coapGateway struct {
	srv      *coap.Server
	buf      *buffer.Log
	pipeline *gateway.Pipeline
	reg      devices.Registry
}

// coapDevice is a device to register: password for ?auth=, psk for DTLS.
type coapDevice struct{ id, password, psk string }

// startCoAPGateway runs a coap.Server on loopback ports chosen by the
// system, routing devices/{device}/{stream} to topic prefix.{stream}. With
// devs it authenticates against a real file registry holding them (auth
// mode registry); without, it runs in open mode.
func startCoAPGateway(t *testing.T, broker, prefix string, opts coap.Options, devs ...coapDevice) *coapGateway {
	t.Helper()
	g := &coapGateway{}
	buf, err := buffer.Open(buffer.Options{Dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.buf = buf
	router, err := gateway.NewRouter([]gateway.Route{{Match: "devices/{device}/{stream}", Topic: prefix + ".{stream}"}})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{broker}}, 2000, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.pipeline = gateway.NewPipeline(gateway.EgressOptions{}, buf, nil, router, sink, sink.MaxBatchBytes(), "e2e-coap", nil)
	ctx, cancel := context.WithCancel(context.Background())
	egressDone := make(chan error, 1)
	go func() { egressDone <- g.pipeline.Run(ctx) }()

	var auth coap.Authenticator
	if len(devs) > 0 {
		reg, err := devices.Open(context.Background(), devices.Options{Mode: devices.ModeRegistry, File: filepath.Join(t.TempDir(), "devices.yaml")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			cred := devices.Credentials{Password: d.password}
			if d.psk != "" {
				cred.PSK = []byte(d.psk)
			}
			if err := devices.Add(context.Background(), reg, devices.Device{ID: d.id}, cred); err != nil {
				t.Fatal(err)
			}
		}
		g.reg, auth = reg, reg
	}
	if opts.UDP == "" {
		opts.UDP = "127.0.0.1:0"
	}
	srv, err := coap.New(opts, buf, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	g.srv = srv
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		srv.Close(sctx)
		// Let egress deliver what was acknowledged before stopping it.
		deadline := time.Now().Add(10 * time.Second)
		for buf.Stats().Records > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		<-egressDone
		sink.Close()
		buf.Close()
		if g.reg != nil {
			g.reg.Close()
		}
	})
	return g
}

func (g *coapGateway) udpAddr(t *testing.T) string {
	t.Helper()
	a, err := g.srv.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// coapClient runs Debian's coap-client (libcoap) and returns its output.
// coap-client exits 0 even for error codes and timeouts, so callers look
// at the output: nothing for an empty 2.xx answer, "4.01 ..." for errors.
func coapClient(t *testing.T, args ...string) string {
	t.Helper()
	args = append([]string{"-B", "5"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "coap-client", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("coap-client %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// coapClientOK runs coap-client and fails the test unless the answer was
// a success without a diagnostic.
func coapClientOK(t *testing.T, args ...string) {
	t.Helper()
	if out := coapClient(t, args...); strings.TrimSpace(out) != "" {
		t.Fatalf("coap-client %s: %s", strings.Join(args, " "), out)
	}
}

type coapEnvelope struct {
	ID         string          `json:"id"`
	Device     string          `json:"device"`
	Stream     string          `json:"stream"`
	Protocol   string          `json:"protocol"`
	Topic      string          `json:"topic"`
	ReceivedAt time.Time       `json:"received_at"`
	Payload    json.RawMessage `json:"payload"`
	PayloadB64 []byte          `json:"payload_b64"`
}

func coapDecode(t *testing.T, m kafka.Message) coapEnvelope {
	t.Helper()
	var e coapEnvelope
	if err := json.Unmarshal(m.Value, &e); err != nil {
		t.Fatalf("envelope %s: %v", m.Value, err)
	}
	return e
}

// coapConsumeExactly waits until want records of topic arrived, then reads
// the whole topic again after settle and fails unless it holds exactly
// want: duplicates would show up as extra records.
func coapConsumeExactly(t *testing.T, broker, topic string, want int, settle time.Duration) []kafka.Message {
	t.Helper()
	consume(t, broker, topic, want, 30*time.Second)
	time.Sleep(settle)
	got := coapReadAll(t, broker, topic)
	if len(got) != want {
		t.Fatalf("topic %s: %d records, want exactly %d", topic, len(got), want)
	}
	return got
}

// coapReadAll returns every record of topic, from each partition's start
// to its end offset at the time of the call.
func coapReadAll(t *testing.T, broker, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.Dial("tcp", broker)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", broker, topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		first, last, err := pc.ReadOffsets()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Seek(first, kafka.SeekAbsolute); err != nil {
			t.Fatal(err)
		}
		for off := first; off < last; off++ {
			pc.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, err := pc.ReadMessage(10 << 20)
			if err != nil {
				t.Fatalf("%s/%d offset %d: %v", topic, p.ID, off, err)
			}
			out = append(out, m)
		}
		pc.Close()
	}
	return out
}
