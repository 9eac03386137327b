package gateway

import "time"

// Protocol names as they appear in envelopes and the iotgw-protocol header.
const (
	ProtocolMQTT = "mqtt"
	ProtocolCoAP = "coap"
)

// Property is one MQTT 5 user property (or any key/value metadata a protocol
// carries); it becomes a Kafka header.
type Property struct {
	Key   string
	Value string
}

// Record is one accepted device message. A protocol adapter builds it, the
// Buffer stores its encoding, the egress pipeline enriches, routes and sends
// it. ID is assigned once at ingest and stored with the record, so it is the
// same on every redelivery and consumers can drop duplicates by it.
type Record struct {
	ID          string     // unique per message, see NewID
	Device      string     // authenticated device id; the Kafka key by default
	Stream      string     // the stream segment of devices/{device}/{stream}, if any
	Protocol    string     // ProtocolMQTT or ProtocolCoAP
	Topic       string     // the MQTT topic or CoAP path the device used
	ReceivedAt  time.Time  // when the gateway accepted the message (UTC)
	QoS         byte       // MQTT QoS; CoAP confirmable maps to 1, non-confirmable to 0
	ContentType string     // MQTT 5 content type or CoAP content format, if given
	Properties  []Property // MQTT 5 user properties, in the order received
	Payload     []byte     // the device's bytes, unchanged

	// Ref is the enrichment result, filled by the Enricher in egress; it is
	// not stored in the Buffer. RefStale is true when Ref came from a cache
	// or snapshot that could not be refreshed.
	Ref      map[string]any
	RefStale bool
}
