package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Segment header layout (little endian), see doc.go:
//
//	0  [8]byte "IOTGWSEG"
//	8  uint16  segment format version (segmentVersion)
//	10 uint16  reserved, 0
//	12 uint32  reserved, 0
//	16 uint64  base offset: the offset of the segment's first record
//	24 uint32  CRC-32C of bytes 0..23
//	28 uint32  reserved, 0
const (
	segmentHeaderSize = 32
	segmentVersion    = 1
	segmentMagic      = "IOTGWSEG"
	segmentSuffix     = ".seg"
)

// segment is the in-memory state of one segment file. The writer changes
// size, visible and last under Log.mu; readers copy them under Log.mu.
type segment struct {
	base       uint64 // offset of the first record (also in the file name)
	size       int64  // bytes of header and frames written
	visible    int64  // bytes Read may see: acknowledged records
	synced     int64  // bytes known to be fsynced
	last       uint64 // offset of the last record written; base-1 when empty
	syncedLast uint64 // offset of the last record in the synced bytes
	path       string
}

func segmentName(base uint64) string { return fmt.Sprintf("%020d%s", base, segmentSuffix) }

// parseSegmentName returns the base offset a segment file name carries.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || base == 0 {
		return 0, false
	}
	return base, true
}

func encodeSegmentHeader(base uint64) []byte {
	b := make([]byte, segmentHeaderSize)
	copy(b, segmentMagic)
	binary.LittleEndian.PutUint16(b[8:10], segmentVersion)
	binary.LittleEndian.PutUint64(b[16:24], base)
	binary.LittleEndian.PutUint32(b[24:28], crc32.Checksum(b[:24], castagnoli))
	return b
}

var errBadSegmentHeader = &corruptError{"bad segment header"}

// checkSegmentHeader validates a segment header against the base offset in
// the file name. A newer format version is ErrFormat (the caller must not
// guess at it); any other mismatch wraps ErrCorrupt.
func checkSegmentHeader(b []byte, base uint64) error {
	if len(b) < segmentHeaderSize || string(b[:8]) != segmentMagic {
		return errBadSegmentHeader
	}
	if crc32.Checksum(b[:24], castagnoli) != binary.LittleEndian.Uint32(b[24:28]) {
		return errBadSegmentHeader
	}
	if v := binary.LittleEndian.Uint16(b[8:10]); v != segmentVersion {
		return fmt.Errorf("%w: segment version %d, this build reads %d", ErrFormat, v, segmentVersion)
	}
	if got := binary.LittleEndian.Uint64(b[16:24]); got != base {
		return fmt.Errorf("%w: header says base offset %d, file name says %d", errBadSegmentHeader, got, base)
	}
	return nil
}

// createSegment creates the segment file for base with its header, syncs it
// and the directory. A leftover file of that name (from a creation that
// failed half way) is replaced: no record can live past the active segment.
func createSegment(dir string, base uint64) (*os.File, error) {
	path := filepath.Join(dir, segmentName(base))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("create segment %d: %w", base, err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(path)
		syncDir(dir)
		return nil, fmt.Errorf("create segment %d: %w", base, err)
	}
	if _, err := f.WriteAt(encodeSegmentHeader(base), 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := syncDir(dir); err != nil {
		return fail(err)
	}
	return f, nil
}

// syncDir fsyncs a directory so that file creations, renames and removals
// in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// listSegments returns the base offsets of the segment files in dir, in
// ascending order.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var bases []uint64
	for _, e := range ents {
		if base, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			bases = append(bases, base)
		}
	}
	// os.ReadDir sorts by name and names are zero-padded, so bases ascend.
	return bases, nil
}
