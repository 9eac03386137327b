//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// secureBrokerPort is the PLAINTEXT port of the SASL/TLS broker these tests
// start (SASL_PLAINTEXT +2, SSL +3, SASL_SSL +4; see scripts/kafka.sh).
const secureBrokerPort = 19292

// TestKafkaSecurity starts a broker with SASL (PLAIN, SCRAM-SHA-256,
// SCRAM-SHA-512) and TLS listeners and writes through each with the sink,
// then runs the binary over SASL_SSL with SCRAM-SHA-512 configured through
// the environment. Wrong credentials and a missing client certificate fail
// with a bounded error.
func TestKafkaSecurity(t *testing.T) {
	k := startKafkaInstance(t, "egress-sec", secureBrokerPort, "KAFKA_SASL=1", "KAFKA_TLS=1")
	ls := k.Listeners()
	tlsDir := k.TLSDir()
	ca, cert, key := filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "client.crt"), filepath.Join(tlsDir, "client.key")
	user, pass := "iotgw", "iotgw-secret"

	cases := []struct {
		name    string
		opts    gateway.KafkaOptions
		wantErr string // "" = must deliver; otherwise a part of the error ("*" = any error)
	}{
		{"SASL_PLAINTEXT PLAIN", gateway.KafkaOptions{Brokers: []string{ls["SASL_PLAINTEXT"]},
			SASL: gateway.KafkaSASLOptions{Mechanism: "PLAIN", Username: user, Password: pass}}, ""},
		{"SASL_PLAINTEXT SCRAM-SHA-256", gateway.KafkaOptions{Brokers: []string{ls["SASL_PLAINTEXT"]},
			SASL: gateway.KafkaSASLOptions{Mechanism: "SCRAM-SHA-256", Username: user, Password: pass}}, ""},
		{"SASL_PLAINTEXT SCRAM-SHA-512", gateway.KafkaOptions{Brokers: []string{ls["SASL_PLAINTEXT"]},
			SASL: gateway.KafkaSASLOptions{Mechanism: "SCRAM-SHA-512", Username: user, Password: pass}}, ""},
		{"SSL client certificate", gateway.KafkaOptions{Brokers: []string{ls["SSL"]},
			TLS: gateway.KafkaTLSOptions{Enabled: true, CAFile: ca, CertFile: cert, KeyFile: key}}, ""},
		{"SASL_SSL SCRAM-SHA-512", gateway.KafkaOptions{Brokers: []string{ls["SASL_SSL"]},
			TLS:  gateway.KafkaTLSOptions{Enabled: true, CAFile: ca},
			SASL: gateway.KafkaSASLOptions{Mechanism: "SCRAM-SHA-512", Username: user, Password: pass}}, ""},
		{"wrong password", gateway.KafkaOptions{Brokers: []string{ls["SASL_PLAINTEXT"]},
			SASL: gateway.KafkaSASLOptions{Mechanism: "SCRAM-SHA-256", Username: user, Password: "nope"}}, "Authentication"},
		{"SSL without client certificate", gateway.KafkaOptions{Brokers: []string{ls["SSL"]},
			TLS: gateway.KafkaTLSOptions{Enabled: true, CAFile: ca}}, "certificate"},
		{"TLS to a plaintext listener", gateway.KafkaOptions{Brokers: []string{ls["SASL_PLAINTEXT"]},
			TLS: gateway.KafkaTLSOptions{Enabled: true, CAFile: ca}}, "*"},
	}
	for i, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			topic := fmt.Sprintf("sec%d.%d", time.Now().UnixNano()%1e6, i)
			c.opts.DialTimeout = 3 * time.Second
			c.opts.WriteTimeout = 5 * time.Second
			sink, err := gateway.NewKafkaSink(c.opts, 100, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			start := time.Now()
			err = sink.EnsureTopic(ctx, gateway.TopicSpec{Name: topic, Partitions: 1})
			if err == nil {
				msgs := []gateway.Message{{Topic: topic, Key: []byte("d"), Value: []byte("a")}, {Topic: topic, Key: []byte("d"), Value: []byte("b")}}
				for attempt := 0; attempt < 20; attempt++ { // a fresh topic's leader may need a moment
					if err = sink.Write(ctx, msgs); err == nil {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			switch {
			case c.wantErr == "":
				if err != nil {
					t.Fatalf("deliver over %s: %v", c.name, err)
				}
				got := kafkaReadAll(t, k.Addr, topic)
				if len(got) != 2 || string(got[0].Value) != "a" || string(got[1].Value) != "b" {
					t.Fatalf("read back %d records", len(got))
				}
			default:
				if err == nil || (c.wantErr != "*" && !strings.Contains(err.Error(), c.wantErr)) {
					t.Fatalf("err = %v, want one mentioning %q", err, c.wantErr)
				}
			}
			if time.Since(start) > 35*time.Second {
				t.Errorf("took %s", time.Since(start))
			}
		})
	}

	// The binary, configured through the environment, over SASL_SSL.
	prefix := uniqueTopicPrefix(t)
	gw := startGateway(t, baseConfig("placeholder:1", t.TempDir(), prefix),
		"IOTGW_KAFKA_BROKERS="+ls["SASL_SSL"], "IOTGW_KAFKA_TLS_ENABLED=true", "IOTGW_KAFKA_TLS_CA_FILE="+ca,
		"IOTGW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "IOTGW_KAFKA_SASL_USERNAME="+user, "IOTGW_KAFKA_SASL_PASSWORD="+pass)
	host, port, _ := net.SplitHostPort(gw.MQTT)
	run(t, strings.NewReader(`{"seq":1}`+"\n"+`{"seq":2}`+"\n"), "mosquitto_pub", "-h", host, "-p", port, "-i", "s1", "-q", "1", "-t", "devices/s1/engine", "-l")
	got := consume(t, k.Addr, prefix+".engine", 2, 60*time.Second)
	if len(got) != 2 || header(got[0], "iotgw-device") != "s1" {
		t.Fatalf("binary over SASL_SSL delivered %d records", len(got))
	}
	if strings.Contains(gw.Logs(), pass) {
		t.Errorf("the gateway logged the SASL password")
	}
}
