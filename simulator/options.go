package simulator

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Options configure Run and Fleet. The zero value of a field means its
// default, documented per field; WithDefaults returns the filled-in copy.
type Options struct {
	// Broker is the MQTT address (host:port) trucks connect to.
	// Default 127.0.0.1:1883.
	Broker string `yaml:"broker"`
	// CoAP is the CoAP address (host:port, UDP) sensors post to.
	// Default 127.0.0.1:5683 (127.0.0.1:5684 with coap_psk).
	CoAP string `yaml:"coap"`

	// Trucks is the number of simulated trucks (MQTT devices truck-0001, ...).
	Trucks int `yaml:"trucks"`
	// Sensors is the number of stationary climate sensors (CoAP devices
	// sensor-0001, ...).
	Sensors int `yaml:"sensors"`
	// FirstDevice is the number of the first device of each kind, so that
	// several simulators can share a gateway with disjoint ids. Default 1.
	FirstDevice int `yaml:"first_device"`

	// Rate is messages per second per truck, across all its streams. 0 sends
	// as fast as the in-flight window allows: a load test.
	Rate float64 `yaml:"rate"`
	// SensorRate is messages per second per sensor. Default: rate.
	SensorRate float64 `yaml:"sensor_rate"`
	// Jitter spreads each interval between two messages of a device by up
	// to plus or minus this fraction (0 to 1), so devices do not tick in
	// lockstep. 0 means none.
	Jitter float64 `yaml:"jitter"`
	// Duration stops sending this long after the start (ramp-up included).
	// 0 means until messages are sent or the context ends.
	Duration time.Duration `yaml:"duration"`
	// Messages is how many messages each device sends before it stops.
	// 0 means no limit.
	Messages int `yaml:"messages"`
	// RampUp spreads the devices' first connects evenly over this long.
	RampUp time.Duration `yaml:"ramp_up"`
	// Seed makes device reference data, routes and payload values
	// reproducible.
	Seed int64 `yaml:"seed"`
	// TimeScale is simulated seconds per message interval second: trucks
	// drive that many times faster than real time. Default 1.
	TimeScale float64 `yaml:"time_scale"`
	// RoutesFile is a route file in the format of the built-in routes.txt
	// (depot and route lines followed by points). Default: the built-in
	// motorways around Hamburg.
	RoutesFile string `yaml:"routes_file"`
	// RunID is written into every payload ("run") so Verify can tell this
	// run's records from earlier ones. Default: derived from the start time.
	RunID string `yaml:"run_id"`

	// QoS is the MQTT QoS of every publish: 0, 1 or 2. Default 1.
	QoS *int `yaml:"qos"`
	// Protocol is the MQTT protocol version: "3.1.1" or "5". Default "5".
	Protocol string `yaml:"protocol"`
	// InFlight is the most unacknowledged QoS 1/2 publishes per connection
	// (lowered to the broker's MQTT 5 receive maximum). Default 100 when
	// rate is 0 (load test), otherwise 10 (a realistic device).
	InFlight int `yaml:"in_flight"`
	// KeepAlive is the MQTT keep-alive; the client pings when idle for half
	// of it. Default 60s.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// PersistentSession asks the broker to keep the session across
	// reconnects (clean session off; MQTT 5 session expiry one hour), so a
	// resent QoS 2 publish is recognised. Default off (clean start).
	PersistentSession bool `yaml:"persistent_session"`
	// Password is the MQTT password pattern; "{device}" is replaced by the
	// device id (the username is always the device id). Empty sends no
	// password.
	Password string `yaml:"password"`
	// TLS connects to the MQTT broker over TLS.
	TLS bool `yaml:"tls"`
	// CAFile is a PEM file of CA certificates that sign the broker's
	// certificate. Default: the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key for mutual
	// TLS. Both or neither.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the private key of cert_file.
	KeyFile string `yaml:"key_file"`
	// Insecure skips verification of the broker's certificate (test setups
	// with self-signed certificates only).
	Insecure bool `yaml:"insecure"`

	// CoAPType is "con" (confirmable: retransmitted until acknowledged, and
	// resent on failure) or "non" (non-confirmable: sent once). Default "con".
	CoAPType string `yaml:"coap_type"`
	// CoAPPSK is the DTLS pre-shared key pattern; "{device}" is replaced by
	// the device id, which is also the PSK identity. Set, sensors use
	// DTLS-PSK (TLS_PSK_WITH_AES_128_CCM_8). Empty uses plain UDP.
	CoAPPSK string `yaml:"coap_psk"`

	// ConnectTimeout bounds a dial plus the MQTT CONNECT/CONNACK or DTLS
	// handshake. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// AckTimeout is how long a publish, ping or CoAP request may wait for
	// its acknowledgement before the connection is taken as dead. Default 30s.
	AckTimeout time.Duration `yaml:"ack_timeout"`
	// ReconnectMin is the first reconnect backoff; it doubles per failed
	// attempt up to reconnect_max, and each wait is drawn at random between
	// half and all of it. Default 250ms.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	// ReconnectMax caps the reconnect backoff. Default 30s.
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// DrainTimeout is how long a device waits for outstanding acks once it
	// stops sending. Default 5s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`

	// Progress receives a progress line every second while Run runs; nil
	// prints nothing.
	Progress io.Writer `yaml:"-"`
	// Logger receives connection events (per-message events at Debug);
	// nil discards.
	Logger *slog.Logger `yaml:"-"`
}

// MQTT protocol versions as they appear in CONNECT.
const (
	mqttV311 byte = 4
	mqttV5   byte = 5
)

// Stream names; MQTT topic devices/{id}/{stream}, Kafka topic iot.{stream}.
const (
	StreamPosition = "position"
	StreamEngine   = "engine"
	StreamEvents   = "events"
	StreamClimate  = "climate"
)

// QoS returns a pointer to q, for Options.QoS.
func QoS(q int) *int { return &q }

// WithDefaults returns a copy of o with every unset field at its default.
func (o Options) WithDefaults() Options {
	if o.Broker == "" {
		o.Broker = "127.0.0.1:1883"
	}
	if o.CoAP == "" {
		o.CoAP = "127.0.0.1:5683"
		if o.CoAPPSK != "" {
			o.CoAP = "127.0.0.1:5684"
		}
	}
	if o.FirstDevice == 0 {
		o.FirstDevice = 1
	}
	if o.SensorRate == 0 {
		o.SensorRate = o.Rate
	}
	if o.TimeScale == 0 {
		o.TimeScale = 1
	}
	if o.QoS == nil {
		o.QoS = QoS(1)
	}
	if o.Protocol == "" {
		o.Protocol = "5"
	}
	if o.InFlight == 0 {
		o.InFlight = 10
		if o.Rate == 0 {
			o.InFlight = 100
		}
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 60 * time.Second
	}
	if o.CoAPType == "" {
		o.CoAPType = "con"
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = 30 * time.Second
	}
	if o.ReconnectMin == 0 {
		o.ReconnectMin = 250 * time.Millisecond
	}
	if o.ReconnectMax == 0 {
		o.ReconnectMax = 30 * time.Second
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 5 * time.Second
	}
	return o
}

// Validate checks the options after defaulting; its errors wrap
// ErrInvalidOptions and name the option.
func (o Options) Validate() error {
	o = o.WithDefaults()
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrInvalidOptions, key, fmt.Sprintf(format, args...))
	}
	switch {
	case o.Trucks < 0:
		return bad("trucks", "must not be negative (got %d)", o.Trucks)
	case o.Sensors < 0:
		return bad("sensors", "must not be negative (got %d)", o.Sensors)
	case o.Trucks+o.Sensors == 0:
		return bad("trucks", "nothing to simulate: set trucks or sensors above 0")
	case o.Trucks > 999999 || o.Sensors > 999999:
		return bad("trucks", "at most 999999 devices of a kind")
	case o.FirstDevice < 1:
		return bad("first_device", "must be 1 or more (got %d)", o.FirstDevice)
	case o.Rate < 0:
		return bad("rate", "must not be negative (got %g)", o.Rate)
	case o.SensorRate < 0:
		return bad("sensor_rate", "must not be negative (got %g)", o.SensorRate)
	case o.Jitter < 0 || o.Jitter > 1:
		return bad("jitter", "must be between 0 and 1 (got %g)", o.Jitter)
	case o.Duration < 0:
		return bad("duration", "must not be negative (got %s)", o.Duration)
	case o.Messages < 0:
		return bad("messages", "must not be negative (got %d)", o.Messages)
	case o.RampUp < 0:
		return bad("ramp_up", "must not be negative (got %s)", o.RampUp)
	case o.TimeScale < 0:
		return bad("time_scale", "must be positive (got %g)", o.TimeScale)
	case *o.QoS < 0 || *o.QoS > 2:
		return bad("qos", "must be 0, 1 or 2 (got %d)", *o.QoS)
	case o.InFlight < 1 || o.InFlight > 65535:
		return bad("in_flight", "must be between 1 and 65535 (got %d)", o.InFlight)
	case o.KeepAlive < time.Second || o.KeepAlive > 65535*time.Second:
		return bad("keep_alive", "must be between 1s and 18h12m15s (got %s)", o.KeepAlive)
	case (o.CertFile == "") != (o.KeyFile == ""):
		return bad("cert_file", "cert_file and key_file go together")
	case o.ConnectTimeout < 0:
		return bad("connect_timeout", "must be positive (got %s)", o.ConnectTimeout)
	case o.AckTimeout < 0:
		return bad("ack_timeout", "must be positive (got %s)", o.AckTimeout)
	case o.ReconnectMin < 0:
		return bad("reconnect_min", "must be positive (got %s)", o.ReconnectMin)
	case o.ReconnectMax < o.ReconnectMin:
		return bad("reconnect_max", "must be at least reconnect_min (%s, got %s)", o.ReconnectMin, o.ReconnectMax)
	case o.DrainTimeout < 0:
		return bad("drain_timeout", "must not be negative (got %s)", o.DrainTimeout)
	}
	if _, err := o.mqttVersion(); err != nil {
		return bad("protocol", "%v", err)
	}
	if o.CoAPType != "con" && o.CoAPType != "non" {
		return bad("coap_type", `must be "con" or "non" (got %q)`, o.CoAPType)
	}
	if o.Trucks > 0 {
		if _, _, err := net.SplitHostPort(o.Broker); err != nil {
			return bad("broker", "want host:port (got %q)", o.Broker)
		}
	}
	if o.Sensors > 0 {
		if _, _, err := net.SplitHostPort(o.CoAP); err != nil {
			return bad("coap", "want host:port (got %q)", o.CoAP)
		}
	}
	for _, r := range o.RunID {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return bad("run_id", "use printable ASCII without quotes or backslashes (got %q)", o.RunID)
		}
	}
	return nil
}

// mqttVersion maps the protocol option to the CONNECT protocol level.
func (o Options) mqttVersion() (byte, error) {
	switch o.Protocol {
	case "3.1.1", "311", "4":
		return mqttV311, nil
	case "5", "5.0":
		return mqttV5, nil
	}
	return 0, fmt.Errorf(`want "3.1.1" or "5" (got %q)`, o.Protocol)
}

// qos returns the defaulted QoS as a byte.
func (o Options) qos() byte {
	if o.QoS == nil {
		return 1
	}
	return byte(*o.QoS)
}

// logger returns the configured logger or one that discards.
func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// secret expands a {device} pattern.
func secret(pattern, device string) string {
	return strings.ReplaceAll(pattern, "{device}", device)
}
