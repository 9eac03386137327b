package buffer

import (
	"errors"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// SyncPolicy says when an appended record counts as durable.
type SyncPolicy string

const (
	// SyncAlways acknowledges a record only after the fsync that covers it.
	// Concurrent appends share one write and one fsync (group commit).
	SyncAlways SyncPolicy = "always"

	// SyncInterval acknowledges a record once it is written to the file and
	// fsyncs every sync_interval. A power loss (not a process crash) can lose
	// records acknowledged in the last sync_interval plus one fsync time.
	SyncInterval SyncPolicy = "interval"
)

// Options configure a Log. The zero value of every field but Dir means its
// default; see DefaultOptions.
type Options struct {
	// Dir holds the segment files, the checkpoint and a lock file. It is
	// created if missing. Required.
	Dir string `yaml:"dir"`

	// MaxBytes caps the records the log holds on disk plus those queued for
	// the writer. When an append would pass it, Append returns ErrFull.
	// Space is freed a whole segment at a time, once every record in it is
	// committed. At least twice segment_bytes. Default 1GiB.
	MaxBytes gateway.Size `yaml:"max_bytes"`

	// SegmentBytes is the size at which the log starts a new segment file.
	// Default 64MiB.
	SegmentBytes gateway.Size `yaml:"segment_bytes"`

	// MaxRecordBytes is the largest record Append accepts; larger ones get
	// ErrTooLarge. Default 1MiB.
	MaxRecordBytes gateway.Size `yaml:"max_record_bytes"`

	// MaxQueueBytes caps the records accepted by Append but not yet written
	// (those waiting for the current write and fsync to finish). Past it
	// Append returns ErrFull, so memory stays bounded when the disk is slow.
	// Default 16MiB.
	MaxQueueBytes gateway.Size `yaml:"max_queue_bytes"`

	// Sync is the fsync policy: "always" (default) or "interval".
	Sync SyncPolicy `yaml:"sync"`

	// SyncInterval is how often the log fsyncs under sync "interval", and so
	// the window of acknowledged records a power loss can take. Default 10ms.
	SyncInterval time.Duration `yaml:"sync_interval"`

	// CursorInterval is how often a changed commit cursor is written to
	// disk. After a crash, records committed during the last cursor_interval
	// are read (and delivered) again. Default 200ms.
	CursorInterval time.Duration `yaml:"cursor_interval"`
}

// Defaults.
const (
	DefaultMaxBytes       = 1 << 30
	DefaultSegmentBytes   = 64 << 20
	DefaultMaxRecordBytes = 1 << 20
	DefaultMaxQueueBytes  = 16 << 20
	DefaultSyncInterval   = 10 * time.Millisecond
	DefaultCursorInterval = 200 * time.Millisecond

	minSegmentBytes = 4 << 10
)

// DefaultOptions returns options with every default set and Dir empty.
func DefaultOptions() Options {
	var o Options
	o.SetDefaults()
	return o
}

// SetDefaults fills zero fields with their defaults.
func (o *Options) SetDefaults() {
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if o.MaxQueueBytes == 0 {
		o.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if o.Sync == "" {
		o.Sync = SyncAlways
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.CursorInterval == 0 {
		o.CursorInterval = DefaultCursorInterval
	}
}

// Validate reports every invalid field, naming its config key. Zero fields
// stand for their defaults.
func (o *Options) Validate() error {
	withDefaults := *o
	withDefaults.SetDefaults()
	return withDefaults.validate()
}

func (o *Options) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("buffer.%s: "+format, append([]any{key}, args...)...))
	}
	if o.Dir == "" {
		bad("dir", "required: the directory for the durable log")
	}
	if o.SegmentBytes < minSegmentBytes {
		bad("segment_bytes", "must be at least %s, got %s", gateway.Size(minSegmentBytes), o.SegmentBytes)
	}
	if o.MaxRecordBytes < 1 {
		bad("max_record_bytes", "must be at least 1 byte, got %d", int64(o.MaxRecordBytes))
	} else if o.MaxRecordBytes > maxFrameData {
		bad("max_record_bytes", "must be at most %s, got %s", gateway.Size(maxFrameData), o.MaxRecordBytes)
	} else if int64(o.MaxRecordBytes)+frameHeaderSize+segmentHeaderSize > int64(o.SegmentBytes) && o.SegmentBytes >= minSegmentBytes {
		bad("max_record_bytes", "must leave room for the segment and frame headers within buffer.segment_bytes (%s), got %s", o.SegmentBytes, o.MaxRecordBytes)
	}
	if o.MaxBytes < 2*o.SegmentBytes {
		bad("max_bytes", "must be at least twice buffer.segment_bytes (%s), got %s", 2*o.SegmentBytes, o.MaxBytes)
	}
	if o.MaxQueueBytes < o.MaxRecordBytes+frameHeaderSize {
		bad("max_queue_bytes", "must be larger than buffer.max_record_bytes (%s), got %s", o.MaxRecordBytes, o.MaxQueueBytes)
	}
	switch o.Sync {
	case SyncAlways, SyncInterval:
	default:
		bad("sync", "must be %q or %q, got %q", SyncAlways, SyncInterval, o.Sync)
	}
	if o.SyncInterval < 0 || (o.Sync == SyncInterval && o.SyncInterval < time.Millisecond) {
		bad("sync_interval", "must be at least 1ms, got %s", o.SyncInterval)
	}
	if o.CursorInterval < 0 {
		bad("cursor_interval", "must not be negative, got %s", o.CursorInterval)
	}
	return errors.Join(errs...)
}
