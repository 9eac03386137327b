package coap

import (
	"cmp"
	"slices"

	"github.com/plgd-dev/go-coap/v3/message"
)

// The server encodes its own answers: go-coap's encoders size every
// message twice through error-returning calls, which cost more than the
// rest of answering a request. Requests are decoded with go-coap.

// encodeDatagram encodes a CoAP message for UDP or DTLS (RFC 7252 §3), or
// returns nil for a token longer than 8 bytes.
func encodeDatagram(m message.Message) []byte {
	if len(m.Token) > message.MaxTokenSize {
		return nil
	}
	opts := sorted(m.Options)
	b := make([]byte, 0, 4+len(m.Token)+optionsLen(opts)+1+len(m.Payload))
	b = append(b, 1<<6|byte(m.Type&3)<<4|byte(len(m.Token)), byte(m.Code), byte(m.MessageID>>8), byte(m.MessageID))
	b = append(b, m.Token...)
	b = appendOptions(b, opts)
	if len(m.Payload) > 0 {
		b = append(b, 0xff)
		b = append(b, m.Payload...)
	}
	return b
}

// encodeFrame encodes a CoAP message for TCP or TLS (RFC 8323 §3.2), or
// returns nil for a token longer than 8 bytes.
func encodeFrame(m message.Message) []byte {
	if len(m.Token) > message.MaxTokenSize {
		return nil
	}
	opts := sorted(m.Options)
	n := optionsLen(opts)
	if len(m.Payload) > 0 {
		n += 1 + len(m.Payload)
	}
	b := make([]byte, 0, 6+len(m.Token)+n)
	tkl := byte(len(m.Token))
	switch {
	case n < 13:
		b = append(b, byte(n)<<4|tkl)
	case n < 269:
		b = append(b, 13<<4|tkl, byte(n-13))
	case n < 65805:
		b = append(b, 14<<4|tkl, byte((n-269)>>8), byte(n-269))
	default:
		x := uint32(n - 65805)
		b = append(b, 15<<4|tkl, byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
	}
	b = append(b, byte(m.Code))
	b = append(b, m.Token...)
	b = appendOptions(b, opts)
	if len(m.Payload) > 0 {
		b = append(b, 0xff)
		b = append(b, m.Payload...)
	}
	return b
}

// sorted returns opts in option number order, the order they are encoded in.
func sorted(opts message.Options) message.Options {
	if !slices.IsSortedFunc(opts, byID) {
		opts = slices.Clone(opts)
		slices.SortStableFunc(opts, byID)
	}
	return opts
}

// appendOptions encodes sorted options with delta encoding (RFC 7252 §3.1).
func appendOptions(b []byte, opts message.Options) []byte {
	prev := 0
	for _, o := range opts {
		d, l := int(o.ID)-prev, len(o.Value)
		dn, ln := nibble(d), nibble(l)
		b = append(b, dn<<4|ln)
		b = appendExtended(b, dn, d)
		b = appendExtended(b, ln, l)
		b = append(b, o.Value...)
		prev = int(o.ID)
	}
	return b
}

// optionsLen is the encoded size of sorted options.
func optionsLen(opts message.Options) int {
	n, prev := 0, 0
	for _, o := range opts {
		n += 1 + extLen(int(o.ID)-prev) + extLen(len(o.Value)) + len(o.Value)
		prev = int(o.ID)
	}
	return n
}

func extLen(v int) int {
	switch nibble(v) {
	case 13:
		return 1
	case 14:
		return 2
	}
	return 0
}

func byID(a, b message.Option) int { return cmp.Compare(a.ID, b.ID) }

// nibble is the 4-bit field for an option delta or length: the value
// itself below 13, else 13 or 14 announcing one or two extended bytes.
func nibble(v int) byte {
	switch {
	case v < 13:
		return byte(v)
	case v < 269:
		return 13
	}
	return 14
}

func appendExtended(b []byte, n byte, v int) []byte {
	switch n {
	case 13:
		return append(b, byte(v-13))
	case 14:
		return append(b, byte((v-269)>>8), byte(v-269))
	}
	return b
}
