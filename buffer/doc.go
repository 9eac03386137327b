// Package buffer is iotgw's durable on-disk log: the gateway.Buffer between
// the protocol adapters, which acknowledge a device only once its message is
// in the log, and the egress pipeline, which reads the log and commits what
// Kafka acknowledged. It is a single ordered log (per-device order follows
// from append order), group-committed, bounded in size, and recovers from a
// crash at any moment without losing an acknowledged record.
//
// # Files
//
// A log directory holds:
//
//	LOCK                      flock'ed while a Log has the directory open
//	checkpoint                commit cursor and recovery hint (see below)
//	00000000000000000001.seg  segments, named by the offset of their first
//	00000000000000052113.seg  record (20 digits, so names sort like offsets)
//
// # Segment format
//
// Integers are little endian. A segment starts with a 32-byte header:
//
//	0  [8]byte  "IOTGWSEG"
//	8  uint16   segment format version, 1
//	10 [6]byte  reserved, 0
//	16 uint64   base offset (must match the file name)
//	24 uint32   CRC-32C (Castagnoli) of bytes 0..23
//	28 uint32   reserved, 0
//
// followed by frames, one per record, back to back:
//
//	0  uint32   CRC-32C of the data followed by header bytes 4..27
//	4  uint32   data length n
//	8  uint8    frame format version, 1
//	9  uint8    flags, 0
//	10 uint16   reserved, 0
//	12 uint64   offset
//	20 int64    append time, Unix nanoseconds (for the oldest-unsent metric)
//	28 [n]byte  data: the record exactly as appended
//
// The checksum covers the length, version, offset and time as well as the
// data, so a damaged length cannot make a reader skip or invent records
// unnoticed. Offsets are consecutive within a segment; a segment's last
// offset is the next segment's base minus one. A newer format version in a
// segment or the checkpoint makes Open fail with ErrFormat rather than
// guess.
//
// # Writing and fsync policy
//
// Append encodes the frame (except offset and checksum) into a queue under
// a mutex and returns; nothing waits for I/O. The queue is bounded: bytes on
// disk plus queued bytes may not pass max_bytes, and queued bytes may not
// pass max_queue_bytes, or Append returns ErrFull at once.
//
// One writer goroutine takes everything queued, assigns offsets, writes it
// to the active segment with a single pwrite (one per segment when the batch
// crosses a segment boundary), and then, under sync "always" (the default),
// calls fdatasync once for the whole batch: group commit. Only then are the
// records made visible to Read and their done callbacks called, in append
// order, on the writer goroutine. While one batch is being synced the next
// one queues up, so the number of records per fsync grows with load.
//
// Under sync "interval" a batch is acknowledged once written (it is then in
// the page cache and survives a crash of the process) and the writer
// fdatasyncs every sync_interval. A power failure or kernel crash can lose
// the records acknowledged in the last sync_interval plus one fsync time;
// recovery then finds a torn or missing tail and handles it as below.
//
// A segment is rolled when the next record would take it past
// segment_bytes: the old segment is fsynced (it is complete and never
// written again), the new one is created with its header, fsynced, and the
// directory is fsynced so that the new file survives a power failure.
//
// A failed write or fsync fails every record of the batch and every record
// queued behind it (done gets the error, which wraps the system error, such
// as ENOSPC), and for 100 ms after it Append refuses records at once
// (ErrFull, wrapping the same error). So no record appended after one that
// failed is stored before the failure is known: an appender that resends
// what failed (an MQTT device after its connection closed) cannot find its
// later messages stored ahead of it. The active
// segment is truncated back to its last good size and fsynced. Until that
// truncation succeeds every later batch fails too: the log never
// acknowledges a record written after bytes whose state it does not know,
// and it never reuses the failed records' offsets for anything but new
// records (no reader ever saw them). Under sync "interval" a failed periodic
// fsync is logged and counted in Stats.WriteErrors; records acknowledged
// since the previous fsync may then be lost in a power failure, and Read
// skips (and counts) them if their bytes come back damaged.
//
// # Commit cursor and checkpoint
//
// Commit only records the cursor in memory. A checkpointer goroutine writes
// the checkpoint file every cursor_interval when it changed, atomically:
// write checkpoint.tmp, fsync it, rename it over checkpoint, fsync the
// directory. Its 68 bytes are:
//
//	0  [8]byte  "IOTGWCKP"
//	8  uint16   checkpoint format version, 1
//	10 [6]byte  reserved, 0
//	16 uint64   commit cursor
//	24 uint64   base of the segment holding the commit position
//	32 int64    commit position: a frame boundary at or before record commit+1
//	40 uint64   base of the tail segment at checkpoint time
//	48 int64    tail position: every byte before it in that segment was fsynced
//	56 uint64   the offset of the frame at the tail position
//	64 uint32   CRC-32C of bytes 0..63
//
// After a crash, Read starts again at the persisted cursor, so the records
// committed during the last cursor_interval (default 200ms) are delivered
// a second time. Delivery is at least once; consumers drop duplicates by
// the record ID stored inside each record.
//
// After each checkpoint, segments whose every record is committed are
// deleted (never the active one) and the directory is fsynced. Space is
// freed a whole segment at a time, which is why max_bytes must be at least
// two segments.
//
// # Recovery
//
// Open takes the directory lock, reads the checkpoint (a missing or damaged
// one is logged and treated as "nothing committed": duplicates, never loss)
// and lists the segments. Its cost does not grow with the backlog:
//
//   - Every segment but the last is trusted by its header and file size: it
//     was fsynced before the next one was created. Its frames are not read.
//   - The last segment is scanned from the checkpoint's tail position when
//     the checkpoint refers to it (from its first frame otherwise), which is
//     at most one segment and, after a clean Close, nothing at all.
//   - Scanning keeps every valid frame whose offset is the next expected
//     one. At a damaged frame (bad checksum, bad header, out-of-sequence
//     offset, or a frame running past the end of the file) it looks further
//     for a valid frame whose offset the damaged bytes can account for
//     (each lost record took at least 28 bytes). If there is one, the
//     damage was in the middle: the records after it are kept, the lost
//     ones are skipped by Read and counted in Stats.CorruptSkipped. If
//     there is none, the damage is a torn tail (a write cut short by a
//     crash): the segment is truncated after the last valid frame and
//     fsynced.
//   - A last segment shorter than its header (a crash while creating it) or
//     with a damaged header gets its header rewritten from its name.
//   - If the log now ends before an offset the checkpoint says was durable
//     or committed, a new segment is started after it, so offsets are never
//     reused.
//
// Damage inside a sealed segment, or before the checkpoint's tail position,
// is found when Read reaches it: Read skips to the next valid frame (as
// above, bounded by the segment's offset range) and counts the records it
// could not read. Read never fails or loops on damaged bytes, and a
// damaged record is never returned: every record returned passed its
// checksum. A frame that is valid but was forged inside a damaged region
// (a payload that contains the bytes of a valid frame with a plausible
// offset) could in theory be picked up by the search after damage; it
// needs damage first and a CRC-32C match, and is accepted knowingly.
//
// # Reading and memory
//
// Read serves records from the segment files with pread through a 128KiB
// buffer, never from memory holding the backlog, so a log with gigabytes
// of backlog costs the same memory as an empty one. When egress keeps up,
// what it reads was just written and comes from the page cache. The only
// per-backlog state in memory is one small struct per segment file.
package buffer
