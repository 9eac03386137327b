package buffer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

func FuzzDecodeFrame(f *testing.F) {
	valid := appendFrame(nil, 7, 1_700_000_000_000_000_000, []byte(`{"t":21.5}`))
	f.Add(valid)
	f.Add(appendFrame(nil, 1, 0, nil))
	f.Add(valid[:frameHeaderSize-1])
	f.Add(valid[:len(valid)-1])
	flipped := bytes.Clone(valid)
	flipped[frameHeaderSize] ^= 1
	f.Add(flipped)
	huge := bytes.Clone(valid)
	huge[7] = 0xff // length far past the input
	f.Add(huge)
	f.Add(make([]byte, 64))
	f.Add(append(bytes.Clone(valid), valid...))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := decodeFrame(b)
		if err != nil {
			if !errors.Is(err, errShortFrame) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		if n < frameHeaderSize || n > len(b) || n != frameSize(len(fr.data)) {
			t.Fatalf("size %d for %d input bytes and %d data bytes", n, len(b), len(fr.data))
		}
		if re := appendFrame(nil, fr.offset, fr.appendedAt, fr.data); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, b[:n])
		}
	})
}

// validFrames returns every (offset, data) that decodes as a valid frame at
// some position in b.
func validFrames(b []byte) map[uint64][][]byte {
	out := map[uint64][][]byte{}
	for p := 0; p+frameHeaderSize <= len(b); p++ {
		if fr, _, err := decodeFrame(b[p:]); err == nil {
			out[fr.offset] = append(out[fr.offset], fr.data)
		}
	}
	return out
}

// validPrefix decodes frames from the start of a segment's first frame for
// as long as they are valid and numbered consecutively from the base: what
// recovery must keep whatever follows.
func validPrefix(seg []byte) []frame {
	var out []frame
	if len(seg) < segmentHeaderSize {
		return nil
	}
	b := seg[segmentHeaderSize:]
	next := uint64(1)
	for {
		fr, n, err := decodeFrame(b)
		if err != nil || fr.offset != next {
			return out
		}
		out = append(out, fr)
		next++
		b = b[n:]
	}
}

func segmentBytes(frames ...[]byte) []byte {
	b := encodeSegmentHeader(1)
	for _, f := range frames {
		b = append(b, f...)
	}
	return b
}

// FuzzRecoverSegment opens a log whose only segment holds arbitrary bytes:
// Open must not panic or fail, Read must return the valid prefix first and
// only real frames after it, and the log must keep working.
func FuzzRecoverSegment(f *testing.F) {
	var frames [][]byte
	for i := range 5 {
		frames = append(frames, appendFrame(nil, uint64(i+1), int64(i), payload(i)))
	}
	good := segmentBytes(frames...)
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(encodeSegmentHeader(1))
	f.Add([]byte{})
	f.Add(good[:20])
	flipped := bytes.Clone(good)
	flipped[segmentHeaderSize+2*len(frames[0])+frameHeaderSize] ^= 4
	f.Add(flipped)
	gap := segmentBytes(frames[0], frames[2], frames[1])
	f.Add(gap)
	f.Add(append(bytes.Clone(good), make([]byte, 100)...))
	badHeader := bytes.Clone(good)
	badHeader[0] = 'X'
	f.Add(badHeader)

	f.Fuzz(func(t *testing.T, seg []byte) {
		// The fuzzer does not notice a hang; turn one into a crash it keeps.
		watchdog := time.AfterFunc(20*time.Second, func() { panic("FuzzRecoverSegment: input hangs") })
		defer watchdog.Stop()
		dir := fuzzDir(t)
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), seg, 0o640); err != nil {
			t.Fatal(err)
		}
		opts := testOptions(dir)
		l, err := Open(opts, nil)
		if err != nil {
			if errors.Is(err, ErrFormat) {
				return // a well-formed header of another version: refused, not guessed at
			}
			t.Fatalf("Open: %v", err)
		}
		defer l.Close()
		es := readAll(t, l)

		prefix := validPrefix(seg)
		if len(es) < len(prefix) {
			t.Fatalf("read %d records, the valid prefix has %d", len(es), len(prefix))
		}
		for i, fr := range prefix {
			if es[i].Offset != gateway.Offset(fr.offset) || !bytes.Equal(es[i].Data, fr.data) {
				t.Fatalf("record %d = (%d, %q), prefix has (%d, %q)", i, es[i].Offset, es[i].Data, fr.offset, fr.data)
			}
		}
		real := validFrames(seg)
		for i, e := range es {
			if i > 0 && e.Offset <= es[i-1].Offset {
				t.Fatalf("offsets not increasing: %d after %d", e.Offset, es[i-1].Offset)
			}
			found := false
			for _, d := range real[uint64(e.Offset)] {
				found = found || bytes.Equal(d, e.Data)
			}
			if !found {
				t.Fatalf("record %d (%q) is not a frame of the input", e.Offset, e.Data)
			}
		}

		if err := appendWait(t, l, []byte("after")); err != nil {
			t.Fatalf("append after recovery: %v", err)
		}
		after := readAll(t, l)
		if len(after) != 1 || string(after[0].Data) != "after" || (len(es) > 0 && after[0].Offset <= es[len(es)-1].Offset) {
			t.Fatalf("after recovery read %v", after)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l2, err := Open(opts, nil)
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		defer l2.Close()
		again := readAll(t, l2)
		if len(again) != len(es)+1 {
			t.Fatalf("second Open read %d records, want %d", len(again), len(es)+1)
		}
		for i := range es {
			if again[i].Offset != es[i].Offset || !bytes.Equal(again[i].Data, es[i].Data) {
				t.Fatalf("second Open record %d differs", i)
			}
		}
	})
}

// fuzzDir returns a temporary directory on tmpfs when there is one: the
// properties fuzzed here do not depend on fsync, and fsyncs on a real disk
// slow the fuzzer (and its input minimisation) a hundredfold.
func fuzzDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "iotgw-buffer-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
