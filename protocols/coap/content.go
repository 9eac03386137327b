package coap

import (
	"bytes"
	"encoding/json"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/iotgw/iotgw/gateway"
)

// Content-Format numbers (RFC 7252 §12.3 and the IANA registry) and the
// record content types they become.
const (
	cfText      uint32 = 0
	cfOctets    uint32 = 42
	cfJSON      uint32 = 50
	cfCBOR      uint32 = 60
	cfSenMLJSON uint32 = 110
	cfSenMLCBOR uint32 = 112

	ctText      = "text/plain;charset=utf-8"
	ctOctets    = "application/octet-stream"
	ctJSON      = "application/json"
	ctCBOR      = "application/cbor"
	ctSenMLJSON = "application/senml+json"
	ctSenMLCBOR = "application/senml+cbor"
)

// PropertyConvertedFrom names the record property (and so the Kafka
// header) that keeps the content type a device sent when the gateway
// converted its payload: CBOR and SenML CBOR are stored as JSON.
const PropertyConvertedFrom = "iotgw-converted-from"

// convertPayload checks a payload against its Content-Format and returns
// what the record stores. JSON and SenML JSON must be valid JSON; CBOR and
// SenML CBOR are converted to JSON (RFC 8949 §6.1; SenML labels become
// their JSON names, RFC 8428 §6) so that the envelope embeds them like any
// JSON payload; octet-stream and text are stored as they are, and a
// request without Content-Format is stored as it is with no content type.
func convertPayload(opts message.Options, payload []byte) (body []byte, contentType string, props []gateway.Property, bad *response) {
	cf, ok := optionUint(opts, message.ContentFormat)
	if !ok {
		return payload, "", nil, nil
	}
	refuse := func(text string) ([]byte, string, []gateway.Property, *response) {
		r := diag(codes.BadRequest, text)
		return nil, "", nil, &r
	}
	switch cf {
	case cfText:
		return payload, ctText, nil, nil
	case cfOctets:
		return payload, ctOctets, nil, nil
	case cfJSON:
		if !json.Valid(payload) {
			return refuse("invalid JSON")
		}
		return payload, ctJSON, nil, nil
	case cfSenMLJSON:
		if !json.Valid(payload) || !isArray(payload) {
			return refuse("invalid SenML JSON")
		}
		return payload, ctSenMLJSON, nil, nil
	case cfCBOR:
		js, err := cborToJSON(payload, false)
		if err != nil {
			return refuse("invalid CBOR")
		}
		return js, ctJSON, []gateway.Property{{Key: PropertyConvertedFrom, Value: ctCBOR}}, nil
	case cfSenMLCBOR:
		js, err := cborToJSON(payload, true)
		if err != nil || !isArray(js) {
			return refuse("invalid SenML CBOR")
		}
		return js, ctSenMLJSON, []gateway.Property{{Key: PropertyConvertedFrom, Value: ctSenMLCBOR}}, nil
	}
	r := diag(codes.UnsupportedMediaType, "use JSON, CBOR, SenML or octets")
	return nil, "", nil, &r
}

func isArray(js []byte) bool {
	js = bytes.TrimLeft(js, " \t\r\n")
	return len(js) > 0 && js[0] == '['
}
