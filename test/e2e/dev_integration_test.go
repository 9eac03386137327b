//go:build integration

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevMode: `iotgw dev --simulate` needs nothing installed; a message
// published with mosquitto_pub is readable with kcat from the embedded
// Kafka-protocol broker, keyed by device with the envelope, and the
// simulator's trucks arrive enriched from the built-in fleet.
func TestDevMode(t *testing.T) {
	kport, mport, hport := freePort(t), freePort(t), freePort(t)
	cmd := exec.Command(binPath, "dev", "--simulate", "--trucks", "3", "--rate", "5",
		"--data-dir", t.TempDir(), "--kafka-port", itoa(kport), "--mqtt", fmt.Sprintf("127.0.0.1:%d", mport),
		"--http", fmt.Sprintf("127.0.0.1:%d", hport), "--coap", "off")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	banner := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var b strings.Builder
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Ctrl-C") {
				banner <- b.String()
			}
		}
	}()
	var text string
	select {
	case text = <-banner:
	case <-time.After(30 * time.Second):
		t.Fatal("no banner within 30s")
	}
	for _, want := range []string{"IN MEMORY", fmt.Sprintf("127.0.0.1:%d", kport), "kcat -b", "mosquitto_pub"} {
		if !strings.Contains(text, want) {
			t.Errorf("banner lacks %q:\n%s", want, text)
		}
	}
	run(t, nil, "mosquitto_pub", "-h", "127.0.0.1", "-p", itoa(mport), "-q", "1", "-t", "devices/truck-7/position", "-m", `{"lat":47.1}`)
	broker := fmt.Sprintf("127.0.0.1:%d", kport)
	deadline := time.Now().Add(30 * time.Second)
	for {
		// kcat -e may never see the end of a partition that keeps growing
		// (the simulator is producing): bound each read and use what came.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, _ := exec.CommandContext(ctx, "kcat", "-b", broker, "-C", "-t", "iot.position", "-o", "beginning", "-q", "-f", "%k %s\n").Output()
		cancel()
		var mine, sim string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "truck-7 ") {
				mine = l
			}
			if strings.HasPrefix(l, "truck-0001 ") {
				sim = l
			}
		}
		if mine != "" && sim != "" {
			if !strings.Contains(mine, `"payload":{"lat":47.1}`) || !strings.Contains(mine, `"device":"truck-7"`) {
				t.Errorf("envelope of the published message: %s", mine)
			}
			if !strings.Contains(sim, `"ref":{`) {
				t.Errorf("simulated truck not enriched from the built-in fleet: %s", sim)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("records not in the embedded Kafka after 30s; kcat read:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
