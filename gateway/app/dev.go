package app

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/mqtt"
)

// DevKafka is the embedded Kafka-protocol broker of `iotgw dev`: franz-go's
// kfake, in memory. Any Kafka client can produce to and consume from it;
// its data is gone when the process exits.
type DevKafka struct {
	cluster *kfake.Cluster
	Addr    string
}

// StartDevKafka listens on 127.0.0.1:port (0 picks a free port).
func StartDevKafka(port int) (*DevKafka, error) {
	if port != 0 {
		// kfake reports a busy port vaguely; check first so the message
		// says what to do.
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			return nil, fmt.Errorf("embedded kafka: port %d is busy (is another Kafka or iotgw dev running? use --kafka-port): %w", port, err)
		}
		ln.Close()
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.DefaultNumPartitions(3),
		kfake.AllowAutoTopicCreation(),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka: %w", err)
	}
	return &DevKafka{cluster: c, Addr: c.ListenAddrs()[0]}, nil
}

// Close stops the broker.
func (k *DevKafka) Close() { k.cluster.Close() }

// DevDataDir is where `iotgw dev` keeps its buffer: the user's cache dir.
func DevDataDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no user cache dir (set --data-dir): %w", err)
	}
	return filepath.Join(base, "iotgw", "dev"), nil
}

// DevConfig is the configuration of `iotgw dev`: open auth, the built-in
// example fleet as reference data, the embedded Kafka, a buffer under
// dataDir. The user's IOTGW_* variables in env still override it.
func DevConfig(dataDir, kafkaAddr string, env map[string]string) (*Config, error) {
	cfg := &Config{
		Gateway: GatewayOptions{ID: "iotgw-dev"},
		Kafka:   gateway.KafkaOptions{Brokers: []string{kafkaAddr}},
		Buffer:  buffer.Options{Dir: filepath.Join(dataDir, "buffer"), MaxBytes: 256 << 20},
		Auth:    devices.Options{Mode: devices.ModeOpen, File: filepath.Join(dataDir, "devices.yaml")},
		Enrich:  enrich.DevOptions(),
		MQTT:    mqtt.Options{TCP: ":1883"},
		HTTP:    HTTPOptions{Listen: "127.0.0.1:8080"},
	}
	cfg.Enrich.Snapshot.Dir = filepath.Join(dataDir, "enrich")
	return loadInto(cfg, strings.NewReader(""), "", env)
}
