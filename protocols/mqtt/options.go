package mqtt

import (
	"fmt"
	"net"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// Options configure the MQTT listeners and limits (config section mqtt).
type Options struct {
	// TCP is the plain MQTT listen address; default :1883, "off" disables it.
	TCP string `yaml:"tcp"`
	// MaxPacketSize is the largest packet accepted; larger ones close the
	// connection. Default 256KiB.
	MaxPacketSize gateway.Size `yaml:"max_packet_size"`
	// ReceiveMaximum is how many QoS 1/2 messages an MQTT 5 client may have
	// unacknowledged; default 1024.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxConnections caps concurrent clients; 0 is unlimited.
	MaxConnections int `yaml:"max_connections"`
	// FullRetry is how often a paused MQTT 3.1.1 client retries its append
	// while the buffer is full; default 20ms.
	FullRetry time.Duration `yaml:"full_retry"`
}

// SetDefaults fills unset fields.
func (o *Options) SetDefaults() {
	if o.TCP == "" {
		o.TCP = ":1883"
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = 256 << 10
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = 1024
	}
	if o.FullRetry == 0 {
		o.FullRetry = 20 * time.Millisecond
	}
}

// Validate reports the first invalid field by its config key.
func (o *Options) Validate() error {
	if o.TCP != "off" {
		if _, _, err := net.SplitHostPort(o.TCP); err != nil {
			return fmt.Errorf("mqtt.tcp: %q is not a listen address like :1883 or 127.0.0.1:1883 (or off)", o.TCP)
		}
	}
	if o.MaxPacketSize < 64 || o.MaxPacketSize > 256<<20 {
		return fmt.Errorf("mqtt.max_packet_size: %s is outside 64B..256MiB", o.MaxPacketSize)
	}
	if o.ReceiveMaximum < 1 || o.ReceiveMaximum > 65535 {
		return fmt.Errorf("mqtt.receive_maximum: %d is outside 1..65535", o.ReceiveMaximum)
	}
	if o.MaxConnections < 0 {
		return fmt.Errorf("mqtt.max_connections: must not be negative")
	}
	if o.FullRetry <= 0 {
		return fmt.Errorf("mqtt.full_retry: must be positive")
	}
	return nil
}
