//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/iotgw/iotgw/devices"
	"github.com/segmentio/kafka-go"
)

// registryConfig is a gateway in registry mode with the TLS listener
// (optional client certificates from pki's CA) and a WebSocket listener.
func registryConfig(broker, bufferDir, prefix, registry string, pki *e2ePKI) string {
	return fmt.Sprintf(`
gateway:
  id: e2e-gw
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: registry
  file: %s
mqtt:
  tls_cert_file: %s
  tls_key_file: %s
  tls_client_ca_file: %s
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
`, broker, bufferDir, registry, pki.Cert, pki.Key, pki.CAFile, prefix)
}

// mosquitto runs a mosquitto client with a deadline and returns its output
// and whether it exited 0.
func mosquitto(t *testing.T, name string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no exit within 20s\n%s", name, strings.Join(args, " "), out)
	}
	return string(out), err == nil
}

type authTag struct {
	Case string `json:"case"`
	V    string `json:"v"`
}

// TestMQTTAuthMatrix runs the registry-mode auth matrix with mosquitto_pub
// (MQTT 3.1.1 and 5) and a Go client over plain TCP, TLS and mutual TLS
// against the real binary, then reads Kafka: exactly the accepted
// messages arrived, each under its authenticated device.
func TestMQTTAuthMatrix(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	pki := newE2EPKI(t, "fleet")
	stranger := newE2EPKI(t, "stranger")
	truck1Cert, truck1Key := pki.Issue("truck-1", "truck-1", false, time.Now().Add(24*time.Hour))
	expiredCert, expiredKey := pki.Issue("truck-1-expired", "truck-1", false, time.Now().Add(-time.Hour))
	strangerCert, strangerKey := stranger.Issue("truck-1-stranger", "truck-1", false, time.Now().Add(24*time.Hour))
	ghostCert, ghostKey := pki.Issue("ghost", "ghost", false, time.Now().Add(24*time.Hour))
	registry := filepath.Join(t.TempDir(), "devices.yaml")
	registerDevices(t, registry, map[string]string{"truck-1": "pw-1", "truck-2": "pw-2", "truck-9": ""})

	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gw := startGateway(t, registryConfig(broker, t.TempDir(), prefix, registry, pki), "IOTGW_MQTT_TLS="+tlsAddr)
	host, port, _ := strings.Cut(gw.MQTT, ":")
	_, tlsPort, _ := strings.Cut(tlsAddr, ":")

	plain := []string{"-h", host, "-p", port}
	secure := []string{"-h", host, "-p", tlsPort, "--cafile", pki.CAFile}
	withCert := func(cert, key string) []string {
		return append(append([]string{}, secure...), "--cert", cert, "--key", key)
	}
	cases := []struct {
		name   string
		conn   []string
		id     string
		user   []string // -u/-P
		topic  string
		stored bool // the message must reach Kafka
	}{
		{"password", plain, "truck-1", []string{"-u", "truck-1", "-P", "pw-1"}, "devices/truck-1/position", true},
		{"password over TLS", secure, "truck-2", []string{"-u", "truck-2", "-P", "pw-2"}, "devices/truck-2/position", true},
		{"client certificate", withCert(truck1Cert, truck1Key), "truck-1", nil, "devices/truck-1/position", true},
		{"wrong password", plain, "truck-1", []string{"-u", "truck-1", "-P", "guess"}, "devices/truck-1/position", false},
		{"anonymous", plain, "truck-1", nil, "devices/truck-1/position", false},
		{"anonymous over TLS", secure, "truck-1", nil, "devices/truck-1/position", false},
		{"unknown device", plain, "ghost", []string{"-u", "ghost", "-P", "pw-1"}, "devices/ghost/position", false},
		{"disabled device", plain, "truck-9", []string{"-u", "truck-9", "-P", "disabled-truck-9"}, "devices/truck-9/position", false},
		{"another device's client id", plain, "truck-2", []string{"-u", "truck-1", "-P", "pw-1"}, "devices/truck-1/position", false},
		{"another device's topic", plain, "truck-1", []string{"-u", "truck-1", "-P", "pw-1"}, "devices/truck-2/position", false},
		{"certificate, another device's client id", withCert(truck1Cert, truck1Key), "truck-2", nil, "devices/truck-2/position", false},
		{"expired certificate", withCert(expiredCert, expiredKey), "truck-1", nil, "devices/truck-1/position", false},
		{"certificate from an unknown CA", withCert(strangerCert, strangerKey), "truck-1", nil, "devices/truck-1/position", false},
		{"certificate for an unregistered device", withCert(ghostCert, ghostKey), "ghost", nil, "devices/ghost/position", false},
	}
	want := map[authTag]string{} // accepted message -> device
	refused := map[authTag]bool{}
	for _, v := range []string{"mqttv311", "mqttv5"} {
		for _, c := range cases {
			tag := authTag{c.name, v}
			msg, _ := json.Marshal(tag)
			args := append(append([]string{}, c.conn...), "-V", v, "-i", c.id, "-q", "1", "-t", c.topic, "-m", string(msg))
			args = append(args, c.user...)
			out, ok := mosquitto(t, "mosquitto_pub", args...)
			if c.stored {
				if !ok {
					t.Errorf("%s %s: refused, want accepted\n%s", v, c.name, out)
				}
				want[tag] = strings.Split(c.topic, "/")[1]
				continue
			}
			refused[tag] = true
			// A refused connection makes mosquitto_pub fail; a refused
			// publish is a disconnect (3.1.1) or a PUBACK 0x87 warning (5).
			if ok && !strings.Contains(out, "Not authorized") {
				t.Errorf("%s %s: accepted, want refused\n%s", v, c.name, out)
			}
		}
	}

	// A Go MQTT 5 client with a client certificate and user properties.
	conn, err := tlsDial(tlsAddr, pki.ClientTLS(truck1Cert, truck1Key))
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "truck-1", CleanStart: true, KeepAlive: 30}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("paho mTLS connect: %v %+v", err, ca)
	}
	goTag := authTag{"go client certificate", "5"}
	msg, _ := json.Marshal(goTag)
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "devices/truck-1/position", QoS: 1, Payload: msg,
		Properties: &paho.PublishProperties{ContentType: "application/json", User: paho.UserProperties{{Key: "trace", Value: "mtls"}}}}); err != nil {
		t.Fatal(err)
	}
	// The admin API shows the device online while connected, offline with
	// its last-seen time after, and no secrets either way.
	devURL := "http://" + gw.HTTP + "/devices"
	waitDevice(t, devURL+"/truck-1", true)
	if list := httpGet(t, devURL+"?online=true"); !strings.Contains(list, `"id": "truck-1"`) || strings.Contains(list, `"id": "truck-2"`) {
		t.Errorf("GET /devices?online=true:\n%s", list)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	want[goTag] = "truck-1"
	if d := waitDevice(t, devURL+"/truck-1", false); d.LastSeen.IsZero() || time.Since(d.LastSeen) > time.Minute {
		t.Errorf("truck-1 last seen %v", d.LastSeen)
	}
	if list := httpGet(t, devURL); !strings.Contains(list, `"id": "truck-9"`) || strings.Contains(list, "pw-") || strings.Contains(list, "argon2") {
		t.Errorf("GET /devices lists too little or a secret:\n%s", list)
	}
	if resp, err := http.Get(devURL + "/ghost"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /devices/ghost = %v %v, want 404", resp.Status, err)
	} else {
		resp.Body.Close()
	}

	msgs := consume(t, broker, prefix+".position", len(want), 60*time.Second)
	got := map[authTag]kafka.Message{}
	for _, m := range msgs {
		var env struct {
			Device  string  `json:"device"`
			Payload authTag `json:"payload"`
		}
		if err := json.Unmarshal(m.Value, &env); err != nil {
			t.Fatalf("envelope: %v\n%s", err, m.Value)
		}
		if refused[env.Payload] {
			t.Errorf("refused case %+v reached Kafka", env.Payload)
		}
		if _, dup := got[env.Payload]; dup {
			t.Errorf("duplicate %+v", env.Payload)
		}
		got[env.Payload] = m
		if d, ok := want[env.Payload]; ok && (env.Device != d || string(m.Key) != d) {
			t.Errorf("%+v stored as device %q key %q, want %q", env.Payload, env.Device, m.Key, d)
		}
	}
	for tag := range want {
		if _, ok := got[tag]; !ok {
			t.Errorf("accepted %+v missing from Kafka", tag)
		}
	}
	if m, ok := got[goTag]; ok && (header(m, "trace") != "mtls" || header(m, "content-type") != "application/json") {
		t.Errorf("MQTT 5 properties not in headers: %v", m.Headers)
	}
	if len(got) != len(want) {
		t.Errorf("%d records, want %d", len(got), len(want))
	}
}

// TestMQTTNoTakeover: while truck-1 is subscribed (mosquitto_sub), other
// identities presenting client id truck-1 are refused and never disconnect
// it; truck-1 itself does take its session over.
func TestMQTTNoTakeover(t *testing.T) {
	broker := kafkaAddr(t)
	pki := newE2EPKI(t, "fleet")
	truck2Cert, truck2Key := pki.Issue("truck-2", "truck-2", false, time.Now().Add(24*time.Hour))
	registry := filepath.Join(t.TempDir(), "devices.yaml")
	registerDevices(t, registry, map[string]string{"truck-1": "pw-1", "truck-2": "pw-2"})
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gw := startGateway(t, registryConfig(broker, t.TempDir(), uniqueTopicPrefix(t), registry, pki), "IOTGW_MQTT_TLS="+tlsAddr)
	host, port, _ := strings.Cut(gw.MQTT, ":")
	_, tlsPort, _ := strings.Cut(tlsAddr, ":")

	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run(v, func(t *testing.T) {
			// mosquitto_sub exits when the broker drops it (-d shows why;
			// stdbuf: its stdout is a pipe, which stdio would buffer).
			var out lockedBuffer
			sub := exec.Command("stdbuf", "-oL", "mosquitto_sub", "-d", "-h", host, "-p", port, "-V", v, "-i", "truck-1", "-u", "truck-1", "-P", "pw-1",
				"-q", "1", "-t", "devices/truck-1/commands")
			sub.Stdout, sub.Stderr = &out, &out
			if err := sub.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { sub.Wait(); close(exited) }()
			defer func() { sub.Process.Kill(); <-exited }()
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(out.String(), "received SUBACK") {
				if time.Now().After(deadline) {
					t.Fatalf("mosquitto_sub never subscribed:\n%s", out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			attacks := [][]string{
				{"-h", host, "-p", port, "-u", "truck-2", "-P", "pw-2"},
				{"-h", host, "-p", port, "-u", "truck-1", "-P", "guess"},
				{"-h", host, "-p", port},
				{"-h", host, "-p", tlsPort, "--cafile", pki.CAFile, "--cert", truck2Cert, "--key", truck2Key},
				{"-h", host, "-p", tlsPort, "--cafile", pki.CAFile, "--cert", truck2Cert, "--key", truck2Key, "-u", "truck-1", "-P", "pw-1"},
			}
			for _, a := range attacks {
				args := append(a, "-V", v, "-i", "truck-1", "-q", "1", "-t", "devices/truck-1/position", "-m", "{}")
				if o, ok := mosquitto(t, "mosquitto_pub", args...); ok {
					t.Errorf("takeover attempt %v accepted\n%s", a, o)
				}
			}
			select {
			case <-exited:
				t.Fatalf("an attempt disconnected the subscriber\n%s", out.String())
			case <-time.After(300 * time.Millisecond):
			}
			// The device itself may take its session over.
			if o, ok := mosquitto(t, "mosquitto_pub", "-h", host, "-p", port, "-V", v, "-i", "truck-1", "-u", "truck-1", "-P", "pw-1",
				"-q", "1", "-t", "devices/truck-1/position", "-m", "{}"); !ok {
				t.Fatalf("the device's own connection refused\n%s", o)
			}
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatalf("the device's own takeover did not disconnect the old session\n%s", out.String())
			}
		})
	}
}

// waitDevice polls the admin API until the device's online state is online
// and returns what it shows.
func waitDevice(t *testing.T, url string, online bool) devices.Device {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var d devices.Device
		if err := json.Unmarshal([]byte(httpGet(t, url)), &d); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		if d.Online == online {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: online %v after 10s, want %v", url, d.Online, online)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
