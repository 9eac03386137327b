//go:build integration

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpcoder "github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/iotgw/iotgw/protocols/coap"
)

// TestCoapToKafka: confirmable and non-confirmable posts from libcoap's
// coap-client, a Block1 transfer, octets and CBOR from a go-coap client
// land in Kafka with the device as key, the envelope, the headers and each
// device's order.
func TestCoapToKafka(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	g := startCoAPGateway(t, broker, prefix, coap.Options{})
	base := "coap://" + g.udpAddr(t)

	const devicesN, perDevice = 4, 10
	for i := 1; i <= perDevice; i++ {
		for d := 1; d <= devicesN; d++ {
			coapClientOK(t, "-m", "post", "-t", "json", "-e", fmt.Sprintf(`{"device":"sensor-%d","seq":%d}`, d, i),
				fmt.Sprintf("%s/devices/sensor-%d/climate", base, d))
		}
	}
	coapClientOK(t, "-m", "post", "-N", "-t", "json", "-e", `{"kind":"non"}`, base+"/devices/sensor-1/non")
	coapClientOK(t, "-m", "put", "-t", "octet-stream", "-e", "\x01\x02raw", base+"/devices/sensor-1/raw")

	// Block1: 3000 bytes in 64-byte blocks.
	bulk := []byte(`{"samples":"` + strings.Repeat("0123456789", 300) + `"}`)
	bulkFile := filepath.Join(t.TempDir(), "bulk.json")
	if err := os.WriteFile(bulkFile, bulk, 0o600); err != nil {
		t.Fatal(err)
	}
	coapClientOK(t, "-m", "post", "-b", "64", "-t", "json", "-f", bulkFile, base+"/devices/sensor-2/bulk")

	// CBOR {"t": 21.5, "ok": true} from go-coap.
	c, err := udp.Dial(g.udpAddr(t), options.WithErrors(func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Post(ctx, "/devices/sensor-3/cbor", message.AppCBOR, bytes.NewReader([]byte{0xa2, 0x61, 't', 0xf9, 0x4d, 0x60, 0x62, 'o', 'k', 0xf5}))
	if err != nil || resp.Code() != codes.Changed {
		t.Fatalf("cbor post: %v %v", resp, err)
	}

	// Errors reach the device as coap-client prints them, and store nothing.
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{"broken"`, base+"/devices/sensor-1/climate"); !strings.Contains(out, "4.00") {
		t.Fatalf("invalid JSON: %q", out)
	}
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{}`, base+"/elsewhere/sensor-1"); !strings.Contains(out, "4.04") {
		t.Fatalf("unknown path: %q", out)
	}

	msgs := coapConsumeExactly(t, broker, prefix+".climate", devicesN*perDevice, time.Second)
	partition := map[string]int{}
	last := map[string]int{}
	for _, m := range msgs {
		e := coapDecode(t, m)
		var p struct {
			Device string `json:"device"`
			Seq    int    `json:"seq"`
		}
		if err := json.Unmarshal(e.Payload, &p); err != nil {
			t.Fatalf("payload %s: %v", e.Payload, err)
		}
		if string(m.Key) != e.Device || e.Device != p.Device || e.Protocol != "coap" || e.Stream != "climate" ||
			e.Topic != "devices/"+e.Device+"/climate" || e.ID == "" {
			t.Fatalf("record key %s envelope %+v", m.Key, e)
		}
		if header(m, "iotgw-protocol") != "coap" || header(m, "content-type") != "application/json" || header(m, "iotgw-id") != e.ID {
			t.Fatalf("headers %v", m.Headers)
		}
		if pp, ok := partition[e.Device]; ok && pp != m.Partition {
			t.Fatalf("%s in partitions %d and %d", e.Device, pp, m.Partition)
		}
		partition[e.Device] = m.Partition
		if p.Seq <= last[e.Device] {
			t.Fatalf("%s: seq %d after %d", e.Device, p.Seq, last[e.Device])
		}
		last[e.Device] = p.Seq
	}
	if len(last) != devicesN {
		t.Fatalf("devices %v", sortedKeys(last))
	}

	non := coapDecode(t, consume(t, broker, prefix+".non", 1, 30*time.Second)[0])
	if string(non.Payload) != `{"kind":"non"}` {
		t.Fatalf("non-confirmable record %+v", non)
	}
	raw := consume(t, broker, prefix+".raw", 1, 30*time.Second)[0]
	if e := coapDecode(t, raw); string(e.PayloadB64) != "\x01\x02raw" || e.Topic != "devices/sensor-1/raw" || header(raw, "content-type") != "application/octet-stream" {
		t.Fatalf("octet record %+v headers %v", e, raw.Headers)
	}
	b := coapDecode(t, consume(t, broker, prefix+".bulk", 1, 30*time.Second)[0])
	if !bytes.Equal(b.Payload, bulk) {
		t.Fatalf("block-wise payload of %d bytes, want %d", len(b.Payload), len(bulk))
	}
	cb := consume(t, broker, prefix+".cbor", 1, 30*time.Second)[0]
	if e := coapDecode(t, cb); string(e.Payload) != `{"t":21.5,"ok":true}` || header(cb, "content-type") != "application/json" ||
		header(cb, coap.PropertyConvertedFrom) != "application/cbor" {
		t.Fatalf("cbor record %s headers %v", e.Payload, cb.Headers)
	}
}

// TestCoapRetransmissionStoredOnce: the same confirmable datagram sent
// several times (before and after its answer) yields one Kafka record and
// the same ACK each time.
func TestCoapRetransmissionStoredOnce(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	g := startCoAPGateway(t, broker, prefix, coap.Options{})
	ua, _ := net.ResolveUDPAddr("udp", g.udpAddr(t))
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	m := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 0x4242, Token: []byte{1, 2, 3, 4}, Payload: []byte(`{"once":true}`)}
	m.Options, _, _ = m.Options.SetPath(make([]byte, 64), "/devices/meter-9/dup")
	m.Options = m.Options.Add(message.Option{ID: message.ContentFormat, Value: []byte{50}})
	dgram := make([]byte, 256)
	n, err := udpcoder.DefaultCoder.Encode(m, dgram)
	if err != nil {
		t.Fatal(err)
	}
	dgram = dgram[:n]
	read := func() message.Message {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1500)
		n, err := conn.Read(b)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		var a message.Message
		a.Options = make(message.Options, 0, 8)
		if _, err := udpcoder.DefaultCoder.Decode(b[:n], &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	// Three copies at once: the durable append is still pending for the
	// second and third.
	for range 3 {
		conn.Write(dgram)
	}
	first := read()
	if first.Type != message.Acknowledgement || first.Code != codes.Changed || first.MessageID != 0x4242 {
		t.Fatalf("answer %v %v mid %x", first.Type, first.Code, first.MessageID)
	}
	// Lost ACK: the device retransmits; the answer comes from the cache.
	for range 2 {
		conn.Write(dgram)
		if a := read(); a.Code != first.Code || a.MessageID != first.MessageID || !bytes.Equal(a.Token, first.Token) {
			t.Fatalf("retransmission answered %v mid %x", a.Code, a.MessageID)
		}
	}
	coapConsumeExactly(t, broker, prefix+".dup", 1, 2*time.Second)
	if st := g.srv.Stats(); st.Acked != 1 || st.Duplicates < 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCoapRegistryAndDTLS: registry mode against the real file registry:
// DTLS-PSK with the device id as PSK identity (coap-client over OpenSSL and
// go-coap over pion), a wrong key refused, ?auth=PASSWORD on plain UDP,
// and another device's path forbidden.
func TestCoapRegistryAndDTLS(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	const key1, key2 = "sensor-1-psk-0123456789", "sensor-2-psk-9876543210"
	g := startCoAPGateway(t, broker, prefix, coap.Options{DTLS: "127.0.0.1:0"},
		coapDevice{"sensor-1", "pw-sensor-1", key1}, coapDevice{"sensor-2", "pw-sensor-2", key2})
	daddr, err := g.srv.DTLSAddr()
	if err != nil {
		t.Fatal(err)
	}
	coaps := "coaps://" + daddr
	plain := "coap://" + g.udpAddr(t)

	coapClientOK(t, "-m", "post", "-t", "json", "-e", `{"via":"dtls"}`, "-k", key1, "-u", "sensor-1", coaps+"/devices/sensor-1/climate")
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{"via":"spoof"}`, "-k", key2, "-u", "sensor-2", coaps+"/devices/sensor-1/climate"); !strings.Contains(out, "4.03") {
		t.Fatalf("sensor-2 posting as sensor-1: %q", out)
	}
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{"via":"wrong-key"}`, "-k", "not-the-right-key-at-all", "-u", "sensor-1", coaps+"/devices/sensor-1/climate"); strings.TrimSpace(out) == "" {
		t.Fatal("wrong PSK: coap-client reported success")
	}
	coapClientOK(t, "-m", "post", "-t", "json", "-e", `{"via":"password"}`, plain+"/devices/sensor-1/climate?auth=pw-sensor-1")
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{"via":"bad-password"}`, plain+"/devices/sensor-1/climate?auth=guess"); !strings.Contains(out, "4.01") {
		t.Fatalf("wrong password: %q", out)
	}
	if out := coapClient(t, "-m", "post", "-t", "json", "-e", `{"via":"none"}`, plain+"/devices/sensor-1/climate"); !strings.Contains(out, "4.01") {
		t.Fatalf("no password: %q", out)
	}

	dc, err := coapdtls.Dial(daddr, &piondtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte(key2), nil },
		PSKIdentityHint: []byte("sensor-2"),
		CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
	}, options.WithErrors(func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := dc.Post(ctx, "/devices/sensor-2/climate", message.AppJSON, bytes.NewReader([]byte(`{"via":"go-coap-dtls"}`)))
	if err != nil || resp.Code() != codes.Changed {
		t.Fatalf("go-coap dtls: %v %v", resp, err)
	}

	msgs := coapConsumeExactly(t, broker, prefix+".climate", 3, 2*time.Second)
	var via []string
	for _, m := range msgs {
		var p struct{ Via string }
		e := coapDecode(t, m)
		json.Unmarshal(e.Payload, &p)
		via = append(via, e.Device+":"+p.Via)
	}
	sort.Strings(via)
	if got := strings.Join(via, " "); got != "sensor-1:dtls sensor-1:password sensor-2:go-coap-dtls" {
		t.Fatalf("records %s", got)
	}
}

// TestCoapBinary runs `iotgw run` with coap.udp on and posts with
// coap-client. It needs CoAP wired into gateway/app (issue 6): until
// gateway/app/app.go imports protocols/coap it skips; from then on it must
// pass.
func TestCoapBinary(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "gateway", "app", "app.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(src, []byte(`"github.com/iotgw/iotgw/protocols/coap"`)) {
		t.Skip("CoAP is not wired into gateway/app yet (issue 6); this test runs once app.go starts coap.Server")
	}
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()
	startGateway(t, baseConfig(broker, t.TempDir(), prefix), "IOTGW_COAP_UDP="+addr)
	for i := 1; i <= 3; i++ {
		coapClientOK(t, "-m", "post", "-t", "json", "-e", fmt.Sprintf(`{"seq":%d}`, i), "coap://"+addr+"/devices/sensor-b/climate")
	}
	for i, m := range coapConsumeExactly(t, broker, prefix+".climate", 3, time.Second) {
		if e := coapDecode(t, m); e.Protocol != "coap" || e.Device != "sensor-b" || string(e.Payload) != fmt.Sprintf(`{"seq":%d}`, i+1) {
			t.Fatalf("record %d: %+v", i, e)
		}
	}
}
