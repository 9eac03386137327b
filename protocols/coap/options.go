package coap

import (
	"fmt"
	"net"
)

// Options configure the CoAP listeners (config section coap).
type Options struct {
	// UDP is the CoAP-over-UDP listen address; default :5683, "off" disables it.
	UDP string `yaml:"udp"`
}

// SetDefaults fills unset fields.
func (o *Options) SetDefaults() {
	if o.UDP == "" {
		o.UDP = ":5683"
	}
}

// Validate reports the first invalid field by its config key.
func (o *Options) Validate() error {
	if o.UDP != "off" {
		if _, _, err := net.SplitHostPort(o.UDP); err != nil {
			return fmt.Errorf("coap.udp: %q is not a listen address like :5683 (or off)", o.UDP)
		}
	}
	return nil
}
