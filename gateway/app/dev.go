package app

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
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

// DevEnv is the configuration of `iotgw dev` expressed as overrides, so the
// user's own IOTGW_* variables still win.
func DevEnv(dataDir, kafkaAddr string, user map[string]string) map[string]string {
	env := map[string]string{
		"IOTGW_GATEWAY_ID":       "iotgw-dev",
		"IOTGW_KAFKA_BROKERS":    kafkaAddr,
		"IOTGW_BUFFER_DIR":       filepath.Join(dataDir, "buffer"),
		"IOTGW_BUFFER_MAX_BYTES": "256MiB",
		"IOTGW_AUTH_MODE":        "open",
		"IOTGW_ENRICH_BACKEND":   "file",
		"IOTGW_MQTT_TCP":         ":1883",
		"IOTGW_HTTP_LISTEN":      "127.0.0.1:8080",
	}
	for k, v := range user {
		env[k] = v
	}
	return env
}
