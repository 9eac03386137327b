package buffer

import (
	"errors"
	"fmt"
	"io"
)

// scanBufferSize is the read buffer of a scanner: big enough that reading a
// backlog costs few preads, small enough that memory does not depend on it.
const scanBufferSize = 128 << 10

// errTornFrame is a frame that runs past the end of the bytes being scanned.
var errTornFrame = &corruptError{"torn frame"}

// scanner reads frames from one segment file with pread through a fixed
// buffer, so that reading a backlog of any size costs the same memory. It
// never reads at or past end, which the owner moves as the file grows.
type scanner struct {
	r      io.ReaderAt
	buf    []byte
	bufPos int64 // file position of buf[0]
	bufLen int   // valid bytes in buf
	pos    int64 // position of the next frame
	end    int64
}

func newScanner(size int) *scanner { return &scanner{buf: make([]byte, size)} }

// reset points the scanner at a file and drops what it had buffered.
func (s *scanner) reset(r io.ReaderAt, pos, end int64) {
	s.r, s.pos, s.end = r, pos, end
	s.bufPos, s.bufLen = 0, 0
}

// bytesAt returns the n bytes at file position p, p+n <= end. The result
// aliases the scanner's buffer and is valid until the next call.
func (s *scanner) bytesAt(p int64, n int) ([]byte, error) {
	if p >= s.bufPos && p+int64(n) <= s.bufPos+int64(s.bufLen) {
		i := int(p - s.bufPos)
		return s.buf[i : i+n], nil
	}
	if n > len(s.buf) {
		b := make([]byte, n)
		if _, err := s.r.ReadAt(b, p); err != nil {
			return nil, readError(p, err)
		}
		return b, nil
	}
	m := min(int64(len(s.buf)), s.end-p)
	k, err := s.r.ReadAt(s.buf[:m], p)
	if k < n {
		s.bufLen = 0
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, readError(p, err)
	}
	s.bufPos, s.bufLen = p, k
	return s.buf[:n], nil
}

func readError(p int64, err error) error {
	if errors.Is(err, io.EOF) {
		// The file is shorter than the log believed: someone truncated it.
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read at %d: %w", p, err)
}

// next decodes the frame at pos and moves past it. It returns io.EOF when
// pos is at end, an error wrapping ErrCorrupt (leaving pos where it was)
// when the bytes at pos are not a whole valid frame, and other errors for
// failed reads. The frame's data aliases the scanner's buffer.
func (s *scanner) next() (frame, error) {
	remain := s.end - s.pos
	if remain <= 0 {
		return frame{}, io.EOF
	}
	if remain < frameHeaderSize {
		return frame{}, errTornFrame
	}
	hdr, err := s.bytesAt(s.pos, frameHeaderSize)
	if err != nil {
		return frame{}, err
	}
	n, _, ok := frameHeaderOK(hdr)
	if !ok {
		return frame{}, errBadHeader
	}
	size := frameHeaderSize + n
	if int64(size) > remain {
		return frame{}, errTornFrame
	}
	b, err := s.bytesAt(s.pos, size)
	if err != nil {
		return frame{}, err
	}
	f, _, err := decodeFrame(b)
	if err != nil {
		return frame{}, err
	}
	s.pos += int64(size)
	return f, nil
}

// resync looks past a corrupt frame at pos for the next valid frame with
// an offset the lost bytes can explain, and moves pos to it. Every lost
// record took at least frameHeaderSize bytes, so a frame found d bytes
// further can have an offset of at most next + d/frameHeaderSize; it must
// also be below limit. It returns the offset of the frame it found; when
// there is none it moves pos to end and returns false. A false match needs a whole frame with a valid checksum at
// a plausible offset; see doc.go.
func (s *scanner) resync(next, limit uint64) (found bool, offset uint64, err error) {
	start := s.pos
	for p := start + 1; p+frameHeaderSize <= s.end; p++ {
		hdr, err := s.bytesAt(p, frameHeaderSize)
		if err != nil {
			return false, 0, err
		}
		n, off, ok := frameHeaderOK(hdr)
		if !ok || off < next || off >= limit || off-next > uint64(p-start)/frameHeaderSize ||
			p+int64(frameHeaderSize+n) > s.end {
			continue
		}
		b, err := s.bytesAt(p, frameHeaderSize+n)
		if err != nil {
			return false, 0, err
		}
		if _, _, err := decodeFrame(b); err == nil {
			s.pos = p
			return true, off, nil
		}
	}
	s.pos = s.end
	return false, 0, nil
}
