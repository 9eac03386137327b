//go:build integration

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMQTTBackpressure fills a tiny buffer while Kafka is unreachable:
// mosquitto_pub over MQTT 5 gets "quota exceeded" (0x97) once it is full,
// an MQTT 3.1.1 publish is held (no PUBACK), and after a restart with
// Kafka reachable exactly the acknowledged messages arrive.
func TestMQTTBackpressure(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	bufDir := t.TempDir()
	cfg := func(brokers string) string {
		return fmt.Sprintf(`
gateway: {id: e2e-gw}
kafka: {brokers: [%s]}
buffer: {dir: %s, max_bytes: 64KiB, segment_bytes: 16KiB, max_record_bytes: 8KiB}
auth: {mode: open}
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
`, brokers, bufDir, prefix)
	}
	nowhere := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	gw := startGateway(t, cfg(nowhere))
	host, port, _ := strings.Cut(gw.MQTT, ":")

	payload := strings.Repeat("x", 2000)
	var acked []int
	refused := 0
	for seq := 1; seq <= 80 && refused < 3; seq++ {
		msg := fmt.Sprintf(`{"seq":%d,"pad":%q}`, seq, payload)
		out, ok := mosquitto(t, "mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv5", "-i", "truck-1", "-q", "1",
			"-t", "devices/truck-1/fill", "-m", msg)
		switch {
		case strings.Contains(out, "Quota exceeded"):
			refused++
		case ok:
			if refused > 0 {
				t.Fatalf("seq %d acknowledged after a refusal with nothing drained", seq)
			}
			acked = append(acked, seq)
		default:
			t.Fatalf("seq %d: %s", seq, out)
		}
	}
	if refused == 0 || len(acked) == 0 {
		t.Fatalf("acked %d, refused %d: the buffer never filled", len(acked), refused)
	}

	// MQTT 3.1.1 has no negative ack: the publish is held, not answered.
	held := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv311", "-i", "truck-2", "-q", "1",
		"-t", "devices/truck-2/fill", "-m", fmt.Sprintf(`{"seq":1,"pad":%q}`, payload))
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- held.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("MQTT 3.1.1 publish into a full buffer completed (%v); want it held", err)
	case <-time.After(3 * time.Second):
	}
	var st struct {
		MQTT struct {
			PausedFull  uint64 `json:"paused_full"`
			RefusedFull uint64 `json:"refused_full"`
		} `json:"mqtt"`
	}
	resp, err := http.Get("http://" + gw.HTTP + "/status")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.MQTT.PausedFull == 0 || st.MQTT.RefusedFull != uint64(refused) {
		t.Errorf("status mqtt %+v (%v), want a paused client and %d refusals", st.MQTT, err, refused)
	}

	// Kafka back: the acknowledged messages, and only those, arrive in order.
	gw.Stop()
	<-done
	if err := os.WriteFile(gw.cfgPath, []byte(cfg(broker)), 0o600); err != nil {
		t.Fatal(err)
	}
	gw.Restart()
	msgs := consume(t, broker, prefix+".fill", len(acked), 60*time.Second)
	var got []int
	for _, m := range msgs {
		var env struct {
			Device  string `json:"device"`
			Payload struct {
				Seq int `json:"seq"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(m.Value, &env); err != nil {
			t.Fatal(err)
		}
		if env.Device == "truck-1" {
			got = append(got, env.Payload.Seq)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(acked) {
		t.Fatalf("Kafka has %v, want exactly the acknowledged %v", got, acked)
	}
}
