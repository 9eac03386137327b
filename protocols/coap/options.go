package coap

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// Off disables a listener.
const Off = "off"

// Options configure the CoAP listeners and limits (config section coap).
type Options struct {
	// UDP is the CoAP-over-UDP listen address; default :5683, "off"
	// disables it.
	UDP string `yaml:"udp"`
	// DTLS is the CoAP-over-DTLS listen address (usually :5684); default
	// "off". It serves devices with a pre-shared key from the device
	// registry (PSK identity = device id) and, with dtls_cert_file, devices
	// with certificates. It is off by default so that a second gateway, the
	// tests and `iotgw dev` never race for the port; in auth mode open there
	// are no keys, so it then needs dtls_cert_file.
	DTLS string `yaml:"dtls"`
	// DTLSCertFile is the PEM certificate chain the DTLS listener presents
	// to certificate (non-PSK) clients. Optional with PSK.
	DTLSCertFile string `yaml:"dtls_cert_file"`
	// DTLSKeyFile is the PEM private key of dtls_cert_file.
	DTLSKeyFile string `yaml:"dtls_key_file"`
	// DTLSClientCAFile is a PEM bundle of the CAs that sign device
	// certificates. Set, a device may authenticate with a certificate whose
	// subject common name is its device id. Unset, certificate clients must
	// send ?auth=PASSWORD like plain UDP clients.
	DTLSClientCAFile string `yaml:"dtls_client_ca_file"`
	// TCP is the CoAP-over-TCP (RFC 8323) listen address, usually :5683;
	// default "off".
	TCP string `yaml:"tcp"`
	// TLS is the CoAP-over-TLS (RFC 8323) listen address, usually :5684;
	// default "off". It needs tls_cert_file.
	TLS string `yaml:"tls"`
	// TLSCertFile is the PEM certificate chain of the TLS listener; default
	// dtls_cert_file.
	TLSCertFile string `yaml:"tls_cert_file"`
	// TLSKeyFile is the PEM private key of tls_cert_file; default
	// dtls_key_file.
	TLSKeyFile string `yaml:"tls_key_file"`
	// TLSClientCAFile is like dtls_client_ca_file for the TLS listener;
	// default dtls_client_ca_file.
	TLSClientCAFile string `yaml:"tls_client_ca_file"`

	// MaxPayload is the largest message body accepted, in one datagram or
	// assembled from Block1 blocks; larger ones get 4.13 Request Entity Too
	// Large with Size1. Default 64KiB. It must also fit the buffer's
	// max_record_bytes.
	MaxPayload gateway.Size `yaml:"max_payload"`
	// BusyMaxAge is the Max-Age sent with 5.03 Service Unavailable when the
	// buffer is full: how long a device should wait before it retries.
	// Default 5s.
	BusyMaxAge time.Duration `yaml:"busy_max_age"`
	// DedupEntries bounds the cache that answers retransmitted confirmable
	// requests (same message id from the same endpoint) without storing
	// them twice. An entry lives EXCHANGE_LIFETIME (247s) unless the cache
	// is full, when the oldest goes first; entries cost about 150 bytes.
	// Default 100000, which covers the full 247s up to about 400 requests/s.
	DedupEntries int `yaml:"dedup_entries"`
	// MaxInFlight caps requests appended to the buffer and not yet durable;
	// past it requests get 5.03. Default 16384.
	MaxInFlight int `yaml:"max_inflight"`
	// MaxConnections caps concurrent DTLS, TCP and TLS connections; 0 is
	// unlimited.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a DTLS, TCP or TLS connection that sent nothing for
	// this long (an observer keeps it with CoAP pings); default 5m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// Defaults.
const (
	DefaultUDP          = ":5683"
	DefaultMaxPayload   = 64 << 10
	DefaultBusyMaxAge   = 5 * time.Second
	DefaultDedupEntries = 100000
	DefaultMaxInFlight  = 16384
	DefaultIdleTimeout  = 5 * time.Minute

	maxMaxPayload = 16 << 20
)

// SetDefaults fills unset fields.
func (o *Options) SetDefaults() {
	if o.UDP == "" {
		o.UDP = DefaultUDP
	}
	for _, p := range []*string{&o.DTLS, &o.TCP, &o.TLS} {
		if *p == "" {
			*p = Off
		}
	}
	if o.TLSCertFile == "" {
		o.TLSCertFile = o.DTLSCertFile
	}
	if o.TLSKeyFile == "" {
		o.TLSKeyFile = o.DTLSKeyFile
	}
	if o.TLSClientCAFile == "" {
		o.TLSClientCAFile = o.DTLSClientCAFile
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.BusyMaxAge == 0 {
		o.BusyMaxAge = DefaultBusyMaxAge
	}
	if o.DedupEntries == 0 {
		o.DedupEntries = DefaultDedupEntries
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
}

// Validate reports every invalid field by its config key. Unset fields
// stand for their defaults.
func (o *Options) Validate() error {
	v := *o
	v.SetDefaults()
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("coap.%s: "+format, append([]any{key}, args...)...))
	}
	for _, l := range []struct{ key, addr, example string }{
		{"udp", v.UDP, ":5683"}, {"dtls", v.DTLS, ":5684"}, {"tcp", v.TCP, ":5683"}, {"tls", v.TLS, ":5684"},
	} {
		if l.addr == Off {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			bad(l.key, "%q is not a listen address like %s or 127.0.0.1%s (or off)", l.addr, l.example, l.example)
		}
	}
	if (v.DTLSCertFile == "") != (v.DTLSKeyFile == "") {
		bad("dtls_cert_file", "dtls_cert_file and dtls_key_file go together: set both or neither")
	}
	if v.DTLSClientCAFile != "" && v.DTLSCertFile == "" {
		bad("dtls_client_ca_file", "device certificates need the server's own certificate too: set dtls_cert_file and dtls_key_file")
	}
	if (v.TLSCertFile == "") != (v.TLSKeyFile == "") {
		bad("tls_cert_file", "tls_cert_file and tls_key_file go together: set both or neither")
	}
	if v.TLS != Off && v.TLSCertFile == "" {
		bad("tls", "CoAP over TLS needs a certificate: set tls_cert_file and tls_key_file (or dtls_cert_file and dtls_key_file)")
	}
	if v.MaxPayload < 16 || v.MaxPayload > maxMaxPayload {
		bad("max_payload", "%s is outside 16B..%s", v.MaxPayload, gateway.Size(maxMaxPayload))
	}
	if v.BusyMaxAge < time.Second || v.BusyMaxAge > time.Hour {
		bad("busy_max_age", "%s is outside 1s..1h (Max-Age counts whole seconds)", v.BusyMaxAge)
	}
	if v.DedupEntries < 1 {
		bad("dedup_entries", "must be at least 1, got %d", v.DedupEntries)
	}
	if v.MaxInFlight < 1 {
		bad("max_inflight", "must be at least 1, got %d", v.MaxInFlight)
	}
	if v.MaxConnections < 0 {
		bad("max_connections", "must not be negative (0 is unlimited)")
	}
	if v.IdleTimeout < time.Second {
		bad("idle_timeout", "must be at least 1s, got %s", v.IdleTimeout)
	}
	return errors.Join(errs...)
}
