package mqtt

import (
	"fmt"
	"math"
	"net"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// Off disables a listener.
const Off = "off"

// Client certificate policies (mqtt.tls_client_auth).
const (
	// ClientAuthOptional verifies a client certificate when the device sends
	// one; a device without one authenticates with its password.
	ClientAuthOptional = "optional"
	// ClientAuthRequire refuses the TLS handshake without a valid client
	// certificate.
	ClientAuthRequire = "require"
)

// Options configure the MQTT listeners and limits (config section mqtt).
type Options struct {
	// TCP is the plain MQTT listen address; default :1883, "off" disables it.
	TCP string `yaml:"tcp"`
	// TLS is the MQTT over TLS listen address. Default: :8883 when
	// tls_cert_file is set, otherwise off (a TLS listener cannot start
	// without a certificate). "off" disables it.
	TLS string `yaml:"tls"`
	// TLSCertFile is the server certificate (PEM, the chain after the leaf)
	// for the TLS listener and, with websocket_tls, the WebSocket listener.
	TLSCertFile string `yaml:"tls_cert_file"`
	// TLSKeyFile is the private key (PEM) of tls_cert_file.
	TLSKeyFile string `yaml:"tls_key_file"`
	// TLSClientCAFile is a PEM bundle of the CAs that sign device
	// certificates. Set, devices may authenticate with a client certificate
	// whose common name or a DNS subject alternative name is their device
	// id (mutual TLS). Empty: client certificates are not asked for.
	TLSClientCAFile string `yaml:"tls_client_ca_file"`
	// TLSClientAuth is "optional" (default: a certificate is verified when
	// sent, otherwise the device uses its password) or "require" (no TLS
	// connection without a valid client certificate). Needs
	// tls_client_ca_file.
	TLSClientAuth string `yaml:"tls_client_auth"`
	// TLSMinVersion is the lowest TLS version accepted: "1.2" (default) or
	// "1.3".
	TLSMinVersion string `yaml:"tls_min_version"`
	// WebSocket is the MQTT over WebSocket listen address (any path, the
	// "mqtt" subprotocol). Default off, so that several gateways on one host
	// (tests, dev) do not fight over a port; :8083 is the usual choice.
	WebSocket string `yaml:"websocket"`
	// WebSocketTLS serves the WebSocket listener over TLS (wss://) with
	// tls_cert_file, and client certificates as for the TLS listener.
	WebSocketTLS bool `yaml:"websocket_tls"`

	// ConnectTimeout closes a connection that has not completed its TLS
	// handshake (or WebSocket upgrade) and sent a CONNECT within this long.
	// Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxPacketSize is the largest packet accepted; larger ones close the
	// connection. Default 256KiB.
	MaxPacketSize gateway.Size `yaml:"max_packet_size"`
	// ReceiveMaximum is how many QoS 1/2 messages a client may have
	// unacknowledged; default 1024. MQTT 5 clients are told it in CONNACK;
	// a client of either version with that many unacknowledged has its
	// reads paused until acks go out.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxConnections caps concurrent clients across all listeners; 0 is
	// unlimited. A client past it gets CONNACK "server busy" (MQTT 5, 0x89)
	// or "server unavailable" (3.1.1, 0x03).
	MaxConnections int `yaml:"max_connections"`
	// MaxRate is the messages per second one device may publish, sustained;
	// 0 (default) is unlimited. Over it, MQTT 5 QoS 1/2 publishes are
	// refused with reason 0x96 (message rate too high), MQTT 3.1.1 clients
	// have their reads paused until the rate allows, and QoS 0 messages are
	// dropped and counted.
	MaxRate float64 `yaml:"max_rate"`
	// MaxBurst is how many messages a device may send at once above
	// max_rate after being idle. Default: max_rate rounded up (one second's
	// worth), at least 1.
	MaxBurst int `yaml:"max_burst"`
	// MaxPendingWrites is how many packets may wait to be written to one
	// client (publishes to local subscribers, commands); past it mochi drops
	// the publish and counts it (Stats.FanOutDropped). Every connection
	// allocates this queue up front, 8 bytes a slot, so it is a memory cost
	// per idle device; raise it for local subscribers that receive a lot
	// (dashboards subscribed to devices/#). Default 128.
	MaxPendingWrites int `yaml:"max_pending_writes"`
	// FullRetry is how often a paused MQTT 3.1.1 client retries its append
	// while the buffer is full; default 20ms.
	FullRetry time.Duration `yaml:"full_retry"`
}

// SetDefaults fills unset fields.
func (o *Options) SetDefaults() {
	if o.TCP == "" {
		o.TCP = ":1883"
	}
	if o.TLS == "" {
		o.TLS = Off
		if o.TLSCertFile != "" {
			o.TLS = ":8883"
		}
	}
	if o.TLSClientAuth == "" && o.TLSClientCAFile != "" {
		o.TLSClientAuth = ClientAuthOptional
	}
	if o.TLSMinVersion == "" {
		o.TLSMinVersion = "1.2"
	}
	if o.WebSocket == "" {
		o.WebSocket = Off
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = 256 << 10
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = 1024
	}
	if o.MaxBurst == 0 && o.MaxRate > 0 {
		o.MaxBurst = int(math.Max(1, math.Ceil(o.MaxRate)))
	}
	if o.MaxPendingWrites == 0 {
		o.MaxPendingWrites = 128
	}
	if o.FullRetry == 0 {
		o.FullRetry = 20 * time.Millisecond
	}
}

// Validate reports the first invalid field by its config key.
func (o *Options) Validate() error {
	for _, l := range []struct{ key, addr, example string }{
		{"mqtt.tcp", o.TCP, ":1883"}, {"mqtt.tls", o.TLS, ":8883"}, {"mqtt.websocket", o.WebSocket, ":8083"},
	} {
		if l.addr == Off {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return fmt.Errorf("%s: %q is not a listen address like %s or 127.0.0.1%s (or off)", l.key, l.addr, l.example, l.example)
		}
	}
	if o.TCP == Off && o.TLS == Off && o.WebSocket == Off {
		return fmt.Errorf("mqtt.tcp: every MQTT listener is off (mqtt.tcp, mqtt.tls, mqtt.websocket); devices could not connect")
	}
	if o.usesTLS() && o.TLSCertFile == "" {
		return fmt.Errorf("mqtt.tls_cert_file: required with mqtt.tls or mqtt.websocket_tls (set both tls_cert_file and tls_key_file, or mqtt.tls: off)")
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return fmt.Errorf("mqtt.tls_key_file: tls_cert_file and tls_key_file go together")
	}
	switch o.TLSClientAuth {
	case "":
	case ClientAuthOptional, ClientAuthRequire:
		if o.TLSClientCAFile == "" {
			return fmt.Errorf("mqtt.tls_client_auth: %q needs mqtt.tls_client_ca_file, the CAs that sign device certificates", o.TLSClientAuth)
		}
	default:
		return fmt.Errorf("mqtt.tls_client_auth: %q is not optional or require", o.TLSClientAuth)
	}
	if o.TLSMinVersion != "1.2" && o.TLSMinVersion != "1.3" {
		return fmt.Errorf("mqtt.tls_min_version: %q is not 1.2 or 1.3", o.TLSMinVersion)
	}
	if o.ConnectTimeout < 0 {
		return fmt.Errorf("mqtt.connect_timeout: must be positive")
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
	if o.MaxRate < 0 || math.IsNaN(o.MaxRate) || math.IsInf(o.MaxRate, 0) {
		return fmt.Errorf("mqtt.max_rate: %g is not a rate in messages per second (0 is unlimited)", o.MaxRate)
	}
	if o.MaxBurst < 0 {
		return fmt.Errorf("mqtt.max_burst: must not be negative")
	}
	if o.MaxPendingWrites < 1 || o.MaxPendingWrites > 1<<20 {
		return fmt.Errorf("mqtt.max_pending_writes: %d is outside 1..1048576", o.MaxPendingWrites)
	}
	if o.FullRetry <= 0 {
		return fmt.Errorf("mqtt.full_retry: must be positive")
	}
	return nil
}

// usesTLS reports whether a listener needs the server certificate.
func (o *Options) usesTLS() bool {
	return o.TLS != Off || (o.WebSocketTLS && o.WebSocket != Off)
}
