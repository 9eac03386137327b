// Package gateway is the core of iotgw: the Record that flows from a protocol
// adapter to Kafka, the seams between the stages (Source, Buffer, Enricher,
// Sink), the record codec used in the durable log, routing from device topics
// to Kafka topics and keys, the egress pipeline and the Kafka sink.
//
// The invariant every stage keeps: a device is acknowledged only after its
// record is durable in the Buffer, and a record leaves the Buffer (Commit)
// only after the Sink reported that Kafka acknowledged it with acks=all.
// Per-device order is kept from Append to the Kafka partition: the egress
// pipeline has at most one Write in flight, each Kafka write carries at most
// one produce batch per partition, and only the messages that failed are
// retried, in buffer order.
package gateway
