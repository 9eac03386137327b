package app

import (
	"strings"
	"testing"
	"time"
)

func TestLoadDefaultsAndEnv(t *testing.T) {
	cfg, err := Load(strings.NewReader(`
kafka:
  brokers: [k1:9092]
buffer:
  dir: /var/lib/iotgw
  max_bytes: 2GiB
egress:
  retry_max: 3s
`), "test.yaml", map[string]string{
		"IOTGW_KAFKA_BROKERS":     "a:9092, b:9092",
		"IOTGW_MQTT_TCP":          "127.0.0.1:1884",
		"IOTGW_HTTP_LISTEN":       "off",
		"IOTGW_COAP_UDP":          ":5699",
		"IOTGW_AUTH_MODE":         "open",
		"IOTGW_ENRICH_REDIS_ADDR": "127.0.0.1:6379",
		"IOTGW_EGRESS_RETRY_MIN":  "50ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Kafka.Brokers, ","); got != "a:9092,b:9092" {
		t.Errorf("brokers = %s", got)
	}
	if cfg.Buffer.MaxBytes != 2<<30 || cfg.Buffer.Dir != "/var/lib/iotgw" {
		t.Errorf("buffer = %+v", cfg.Buffer)
	}
	if cfg.MQTT.TCP != "127.0.0.1:1884" || cfg.HTTP.Listen != "off" || cfg.CoAP.UDP != ":5699" || cfg.Auth.Mode != "open" {
		t.Errorf("listeners/auth not overridden: %+v %+v %+v %+v", cfg.MQTT, cfg.HTTP, cfg.CoAP, cfg.Auth)
	}
	if cfg.Egress.RetryMin != 50*time.Millisecond || cfg.Egress.RetryMax != 3*time.Second {
		t.Errorf("egress = %+v", cfg.Egress)
	}
	if cfg.Egress.DLQ != "iot.dlq" || cfg.Kafka.ClientID != "iotgw" || cfg.MQTT.MaxPacketSize != 256<<10 {
		t.Error("defaults not applied")
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, yaml string
		env        map[string]string
		want       []string
	}{
		{"unknown key", "kafka:\n  brokers: [a:1]\n  brokerz: x\nbuffer: {dir: /x}\n", nil, []string{"kafka.brokerz: unknown key (line 3)"}},
		{"unknown section", "kafak: {}\n", nil, []string{"kafak: unknown key"}},
		{"bad size", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x, max_bytes: lots}\n", nil, []string{"invalid size \"lots\""}},
		{"bad duration", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\negress: {retry_max: soon}\n", nil, []string{"soon"}},
		{"linger too long", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\negress: {linger: 2s}\n", nil, []string{"egress.linger: 2s is outside 0..1s"}},
		{"no brokers", "buffer: {dir: /x}\n", nil, []string{"kafka.brokers: at least one broker"}},
		{"bad listen", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\nmqtt: {tcp: nonsense}\n", nil, []string{"mqtt.tcp:"}},
		{"bad env", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\n", map[string]string{"IOTGW_MQTT_RECEIVE_MAXIMUM": "many"}, []string{"mqtt.receive_maximum (from IOTGW_MQTT_RECEIVE_MAXIMUM=\"many\")"}},
		{"bad route", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\nroutes: [{match: 'devices/{device}/{stream}', topic: 'iot.{nope}'}]\n", nil, []string{"routes[0].topic"}},
		{"route typo", "kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\nroutes: [{match: a, topik: b}]\n", nil, []string{"routes[0].topik: unknown key"}},
		{"not a mapping", "- a\n- b\n", nil, []string{"top level must be a mapping"}},
		{"several at once", "kafka: {brokers: []}\nbuffer: {dir: ''}\nlog: {level: loud}\n", nil, []string{"kafka.brokers", "log.level", "buffer.dir"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(strings.NewReader(c.yaml), "bad.yaml", c.env)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestEveryLeafHasAnEnvName(t *testing.T) {
	names := map[string]bool{}
	for _, l := range EnvNames() {
		name, _, _ := strings.Cut(l, "\t")
		names[name] = true
	}
	for _, want := range []string{"IOTGW_KAFKA_BROKERS", "IOTGW_BUFFER_DIR", "IOTGW_MQTT_TCP", "IOTGW_COAP_UDP",
		"IOTGW_HTTP_LISTEN", "IOTGW_AUTH_MODE", "IOTGW_ENRICH_REDIS_ADDR"} {
		if !names[want] {
			t.Errorf("no env override %s", want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\n")
	f.Add("routes: [{match: '#', topic: t}]")
	f.Add("buffer: {max_bytes: 1e400}")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Load(strings.NewReader(s), "fuzz.yaml", nil)
	})
}

func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := LoadFile("../../examples/iotgw.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 2 || cfg.Kafka.Brokers[0] != "kafka-1:9092" || cfg.Auth.Mode != "registry" {
		t.Errorf("example not read as written: %+v", cfg)
	}
}

func TestEdgeBoxExampleIsValid(t *testing.T) {
	if _, err := LoadFile("../../examples/edge-box.yaml", nil); err != nil {
		t.Fatal(err)
	}
}

// egress.linger defaults to 5ms when unset; 0 (from the file or the
// environment) turns it off rather than meaning "unset".
func TestLoadEgressLinger(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		env        map[string]string
		want       time.Duration
	}{
		{"default", "", nil, 5 * time.Millisecond},
		{"off", "egress: {linger: 0s}\n", nil, 0},
		{"set", "egress: {linger: 20ms}\n", nil, 20 * time.Millisecond},
		{"env", "", map[string]string{"IOTGW_EGRESS_LINGER": "0s"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Load(strings.NewReader("kafka: {brokers: [a:1]}\nbuffer: {dir: /x}\n"+c.yaml), "test.yaml", c.env)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Egress.SetDefaults()
			if cfg.Egress.Linger == nil || *cfg.Egress.Linger != c.want {
				t.Fatalf("egress.linger = %v, want %s", cfg.Egress.Linger, c.want)
			}
		})
	}
}
