package gateway

import "errors"

var (
	// ErrFull is returned by Buffer.Append when the log has reached its size
	// cap. Nothing was stored; the caller must apply backpressure to its device
	// rather than acknowledge.
	ErrFull = errors.New("buffer full")

	// ErrClosed is returned by a Buffer or Sink used after Close.
	ErrClosed = errors.New("closed")

	// ErrCorrupt is returned by DecodeRecord for bytes that are not a record
	// this version can read.
	ErrCorrupt = errors.New("corrupt record")

	// ErrNotConnected is returned by CommandTarget.Deliver when the device
	// has no connection to that adapter.
	ErrNotConnected = errors.New("device not connected")

	// ErrNoRoute is returned by Router.Route when no rule matches a topic.
	ErrNoRoute = errors.New("no route matches")

	// ErrTopicRejected is wrapped by Sink.EnsureTopic (and reported as the
	// cause of permanent write failures) when a topic cannot be used: it is
	// missing and kafka.create_topics is false, or Kafka refused to create
	// it. Records for it go to the dead-letter topic; at start-up the
	// gateway refuses to run (CheckTopics).
	ErrTopicRejected = errors.New("kafka topic rejected")

	// ErrSchema is wrapped by the egress pipeline's validation error when a
	// payload does not match its stream's JSON Schema (egress.schemas); the
	// record goes to the dead-letter topic.
	ErrSchema = errors.New("payload does not match schema")
)
