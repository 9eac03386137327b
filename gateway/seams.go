package gateway

import (
	"context"
	"strconv"
	"time"
)

// Offset is a position in the Buffer. Offsets grow by one per record, start
// at 1, and are never reused for the lifetime of a buffer directory.
type Offset uint64

// Entry is one record read back from the Buffer.
type Entry struct {
	Offset Offset
	Data   []byte // owned by the caller after Read returns
}

// Buffer is the durable local log between ingest and egress.
//
// Append is called concurrently by every protocol adapter connection; Read
// and Commit by the single egress pipeline.
type Buffer interface {
	// Append queues data to be written and returns at once; it never waits
	// for I/O. done is called exactly once: with nil when the record is
	// durable (fsynced under sync policy "always"; written under "interval"),
	// or with the error that lost it. Callbacks run in append order on the
	// log's writer goroutine and must not block: they release acks.
	//
	// Append returns ErrFull, without calling done, when storing data would
	// exceed the log's size cap; ErrClosed after Close. The caller then
	// applies backpressure and must not acknowledge the device.
	//
	// The caller may reuse data as soon as Append returns: an
	// implementation copies what it keeps.
	Append(data []byte, done func(error)) error

	// Read blocks until at least one durable record past the read cursor
	// exists, then returns up to maxRecords records totalling at most
	// maxBytes (always at least one record) and advances the read cursor.
	// It returns ctx.Err() when ctx is done and ErrClosed after Close.
	// After a restart the read cursor starts at the commit cursor, so
	// records read but not committed before a crash are read again.
	Read(ctx context.Context, maxRecords, maxBytes int) ([]Entry, error)

	// Commit records that every record up to and including off was
	// delivered, so their space may be freed. The commit cursor is persisted;
	// committing an offset at or below the current cursor is a no-op.
	Commit(off Offset) error

	// Close flushes and syncs what was appended, calls every pending done
	// callback, and releases the files. It is safe to call twice.
	Close() error
}

// Source is a protocol front door (MQTT, CoAP). It authenticates devices,
// turns their messages into Records, appends them to the Buffer and
// acknowledges each one only after its Append completed.
type Source interface {
	// Start binds the listeners and returns once they accept connections;
	// serving continues in goroutines the Source owns until Close.
	Start(ctx context.Context) error

	// Close stops accepting, waits (bounded by ctx) for acknowledgements of
	// appends already made, and closes connections. Safe to call twice.
	Close(ctx context.Context) error
}

// Enricher adds reference data to records before they are routed.
type Enricher interface {
	// Enrich fills Ref (and RefStale) on each record it knows about. It must
	// not block ingest or delivery on a slow or absent reference store: ctx
	// bounds the call, and an unreachable store means records are enriched
	// from cache, marked stale, or left unenriched, never an error that
	// stops delivery. An error return is logged and the batch goes on.
	Enrich(ctx context.Context, recs []*Record) error
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Message is a routed record ready for Kafka.
type Message struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []Header
	Offset  Offset // the Buffer offset it came from
}

// TopicSpec is how a topic the gateway creates is configured.
type TopicSpec struct {
	Name              string
	Partitions        int               // 0 means the gateway default, 3
	ReplicationFactor int               // -1 means the broker's default
	Config            map[string]string // topic configs such as min.insync.replicas
}

// Sink delivers messages to Kafka.
type Sink interface {
	// EnsureTopic creates the topic when it does not exist and creation is
	// allowed; an existing topic is left as it is. It blocks for one
	// round trip, bounded by ctx. It returns an error wrapping
	// ErrTopicRejected when the topic cannot be used (missing while creation
	// is not allowed, or Kafka refused to create it); any other error is
	// transient and the call may be repeated. EnsureTopic is safe for
	// concurrent use, also while a Write is in flight.
	EnsureTopic(ctx context.Context, spec TopicSpec) error

	// Write sends msgs and returns nil only when Kafka acknowledged every one
	// of them (acks=all). Messages for one partition are sent as one batch
	// and keep their relative order. A *WriteError says which messages were
	// not written; any other error means none may be assumed written. The
	// caller retries what failed, so duplicates are possible after a
	// failure and reordering is not. Write is not safe for concurrent use:
	// the egress pipeline calls it with one batch at a time.
	Write(ctx context.Context, msgs []Message) error

	// Close releases connections. Safe to call twice.
	Close() error
}

// WriteError reports which messages of a batch Kafka did not acknowledge.
type WriteError struct {
	Retry     []int   // indexes that failed temporarily: send again
	Permanent []int   // indexes Kafka will never accept (too large, invalid topic, not authorized)
	Causes    []error // the reason for each Permanent index, same length
	Err       error   // the first error seen, for logs
}

func (e *WriteError) Error() string {
	return "kafka write: " + strconv.Itoa(len(e.Retry)) + " to retry, " +
		strconv.Itoa(len(e.Permanent)) + " rejected: " + e.Err.Error()
}

func (e *WriteError) Unwrap() error { return e.Err }

// Command is one downlink command for a device, consumed from Kafka
// (topic iot.commands, key = device id, value = the command bytes).
type Command struct {
	ID      string // unique per command: the Kafka header iotgw-command-id, or topic/partition/offset
	Device  string
	Payload []byte
	Headers []Header
	Expires time.Time // zero means no expiry
}

// CommandTarget is a protocol adapter that can deliver commands to the
// devices connected to it (MQTT publish QoS 1 on devices/{device}/commands,
// CoAP Observe notification on /devices/{device}/commands).
type CommandTarget interface {
	// Deliver hands cmd to the device if it is connected to this adapter.
	// It returns ErrNotConnected when the device is not connected here (the
	// caller queues the command or tries another adapter), nil once the
	// device acknowledged it (MQTT PUBACK, CoAP ACK) or, for transports
	// without acknowledgement, once it was sent. ctx bounds the wait.
	Deliver(ctx context.Context, cmd Command) error
}
