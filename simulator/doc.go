// Package simulator is the truck and sensor fleet that exercises an iotgw
// gateway: a library behind `iotgw simulate` and `iotgw dev --simulate`.
//
// Trucks drive real motorways around Hamburg (routes.txt, embedded) with
// speed profiles, stops, traffic jams and engine, fuel and door events, and
// publish over MQTT (3.1.1 or 5, QoS 0/1/2, optional TLS) to
// devices/{id}/position, devices/{id}/engine and devices/{id}/events.
// Stationary climate sensors POST to coap://host/devices/{id}/climate
// (confirmable or not, optional DTLS-PSK). Each device has its own
// connection, reconnects with jittered exponential backoff and, for MQTT,
// resends its unacknowledged QoS 1/2 publishes with DUP set.
//
// # Sequence numbers
//
// Every payload carries "device", "seq" and "ts". seq is per device across
// all of its streams: it starts at 1 and grows by one for each new message,
// whatever the stream, so a consumer can tell a gap from a message that went
// to another topic only by looking at every stream of the device. A resent
// message keeps its seq. "run" identifies one Run so that Verify can tell
// this run's records from those of earlier runs with the same device ids.
// "ts" is the wall-clock time the message was generated (RFC 3339, nanos).
//
// # Determinism
//
// Given the same Seed, device numbering and rates, every device produces
// the same sequence of streams and payload values; only ts, run and the
// timing of sends (network, acks, reconnects) differ between runs. Truck
// physics advance by simulated time that is tied to the message count
// (1/rate seconds per message, or one second per message when rate is 0,
// times time_scale), not to the wall clock.
//
// # What is counted
//
// sent counts new messages written to the network (retries are counted
// apart, in retries); acked counts PUBACKs and PUBRECs (QoS 1/2) and 2.xx
// CoAP responses; refused counts negative acknowledgements (MQTT 5 reason
// codes >= 0x80, CoAP 4.xx/5.xx). A refused message is final: it is not
// retried and its seq stays a gap, as the device moves on and keeps its
// order; after a refusal the device holds back for reconnect_min. QoS 0
// messages are never acked. Ack latency is measured from a message's first
// send to its acknowledgement, so it includes time spent reconnecting.
//
// The Report keeps, per device, the set of acked seqs as a range list; Verify
// consumes the gateway's Kafka topics and checks that every acked message
// arrived, in order per device and partition, keyed and partitioned by
// device id.
package simulator
