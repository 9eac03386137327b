package buffer

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Frame layout (little endian), see doc.go:
//
//	0  uint32  CRC-32C of data followed by header bytes 4..27
//	4  uint32  data length n
//	8  uint8   frame format version (frameVersion)
//	9  uint8   flags, 0
//	10 uint16  reserved, 0
//	12 uint64  offset
//	20 int64   append time, Unix nanoseconds
//	28 data[n]
const (
	frameHeaderSize = 28
	frameVersion    = 1

	// maxFrameData bounds the length field a decoder accepts, whatever
	// max_record_bytes says now: a log written with a larger setting must
	// stay readable after the setting is lowered.
	maxFrameData = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShortFrame means the bytes end before the frame does; the caller needs
// more input (or, at the end of a file, has found a torn frame).
var errShortFrame = errors.New("short frame")

// frame is one decoded record. data aliases the decoder's input.
type frame struct {
	offset     uint64
	appendedAt int64 // Unix nanoseconds
	data       []byte
}

// frameSize is the number of bytes a record of n data bytes takes on disk.
func frameSize(n int) int { return frameHeaderSize + n }

// putFrameHeader writes header bytes 4..27 (everything but the CRC) into b.
func putFrameHeader(b []byte, n int, offset uint64, appendedAt int64) {
	binary.LittleEndian.PutUint32(b[4:8], uint32(n))
	b[8] = frameVersion
	b[9] = 0
	binary.LittleEndian.PutUint16(b[10:12], 0)
	binary.LittleEndian.PutUint64(b[12:20], offset)
	binary.LittleEndian.PutUint64(b[20:28], uint64(appendedAt))
}

// sealFrame sets the CRC of a frame whose header is complete, given the
// CRC-32C of its data. Computing the data part first lets appenders do it in
// parallel, before the writer knows the offset.
func sealFrame(b []byte, dataCRC uint32) {
	binary.LittleEndian.PutUint32(b[0:4], crc32.Update(dataCRC, castagnoli, b[4:frameHeaderSize]))
}

// appendFrame appends the encoding of one record to dst.
func appendFrame(dst []byte, offset uint64, appendedAt int64, data []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderSize)...)
	dst = append(dst, data...)
	putFrameHeader(dst[start:], len(data), offset, appendedAt)
	sealFrame(dst[start:], crc32.Checksum(data, castagnoli))
	return dst
}

// frameHeaderOK reports whether b (at least frameHeaderSize bytes) looks like
// a frame header, without checking the CRC, and returns the data length.
// Resynchronisation uses it to skip most candidate positions cheaply.
func frameHeaderOK(b []byte) (n int, offset uint64, ok bool) {
	if b[8] != frameVersion || b[9] != 0 || b[10] != 0 || b[11] != 0 {
		return 0, 0, false
	}
	l := binary.LittleEndian.Uint32(b[4:8])
	if l > maxFrameData {
		return 0, 0, false
	}
	return int(l), binary.LittleEndian.Uint64(b[12:20]), true
}

// decodeFrame decodes the frame at the start of b and returns it with its
// encoded size. It returns errShortFrame when b ends inside the frame and an
// error wrapping ErrCorrupt when the bytes are not a valid frame.
func decodeFrame(b []byte) (frame, int, error) {
	if len(b) < frameHeaderSize {
		return frame{}, 0, errShortFrame
	}
	n, offset, ok := frameHeaderOK(b)
	if !ok {
		return frame{}, 0, errBadHeader
	}
	size := frameHeaderSize + n
	if len(b) < size {
		return frame{}, 0, errShortFrame
	}
	data := b[frameHeaderSize:size]
	want := binary.LittleEndian.Uint32(b[0:4])
	if crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, b[4:frameHeaderSize]) != want {
		return frame{}, 0, errBadCRC
	}
	return frame{
		offset:     offset,
		appendedAt: int64(binary.LittleEndian.Uint64(b[20:28])),
		data:       data,
	}, size, nil
}

var (
	errBadHeader  = &corruptError{"bad frame header"}
	errBadCRC     = &corruptError{"frame checksum mismatch"}
	errFrameOrder = &corruptError{"frame offset out of sequence"}
)

type corruptError struct{ msg string }

func (e *corruptError) Error() string { return e.msg }
func (e *corruptError) Unwrap() error { return ErrCorrupt }
