// Package app assembles a running gateway from a Config: it opens the
// buffer, builds the Kafka sink, the enricher, the router and the protocol
// adapters, starts them in dependency order and stops them in reverse. It
// is the only package that knows every other one; cmd/iotgw stays a thin
// flag parser over it.
//
// Start order: buffer, sink, enricher, egress pipeline, protocol listeners,
// admin HTTP. If one fails, the ones already started are stopped.
// Stop order: admin HTTP, protocol listeners (acks of appends already made
// are still written), egress (given up to shutdown_timeout to deliver the
// backlog), enricher, sink, buffer (flushed and synced).
package app
