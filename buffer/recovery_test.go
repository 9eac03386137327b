package buffer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// fillLog appends n records (payload(i)) and closes the log.
func fillLog(t *testing.T, opts Options, n int) {
	t.Helper()
	l, err := Open(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := appendWait(t, l, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"+segmentSuffix))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// frameStart returns the file position of record i (0-based) in a log whose
// records are all payload(j) and fit the first segment.
func frameStart(i int) int64 {
	return segmentHeaderSize + int64(i*frameSize(len(payload(0))))
}

// readAll reads every record that is readable now, without waiting (a
// cancelled context makes Read return at once when nothing is left).
func readAll(t testing.TB, l *Log) []gateway.Entry {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out []gateway.Entry
	for {
		es, err := l.Read(ctx, 1000, 1<<30)
		if errors.Is(err, context.Canceled) {
			return out
		}
		if err != nil {
			t.Fatalf("Read: %v (after %d records)", err, len(out))
		}
		out = append(out, es...)
	}
}

func modifyFile(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverDamage(t *testing.T) {
	const n = 50
	tests := []struct {
		name string
		// damage changes the log's files after n records were written and
		// the log closed.
		damage      func(t *testing.T, dir string)
		wantMissing []int // records (0-based) that must not come back
		wantCorrupt uint64
		wantNext    gateway.Offset // offset the next append gets
	}{
		{
			name:     "intact",
			damage:   func(*testing.T, string) {},
			wantNext: n + 1,
		},
		{
			name: "torn last frame",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte { return b[:frameStart(n-1)+10] })
			},
			wantMissing: []int{n - 1},
			// The checkpoint said record n was durable: its loss is counted
			// and its offset is not reused.
			wantCorrupt: 1,
			wantNext:    n + 1,
		},
		{
			name: "torn header of last frame, no checkpoint",
			damage: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, checkpointName))
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte { return b[:frameStart(n-1)+3] })
			},
			wantMissing: []int{n - 1},
			wantNext:    n,
		},
		{
			name: "zeros after the tail",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte { return append(b, make([]byte, 5000)...) })
			},
			wantNext: n + 1,
		},
		{
			name: "garbage after the tail",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte { return append(b, bytes.Repeat([]byte{0xa5, 1, 0, 0}, 300)...) })
			},
			wantNext: n + 1,
		},
		{
			name: "bit flip in the middle and torn tail",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte {
					b[frameStart(20)+frameHeaderSize+3] ^= 0x10
					return b[:frameStart(n-1)+frameHeaderSize+2]
				})
			},
			wantMissing: []int{20, n - 1},
			wantCorrupt: 2,
			wantNext:    n + 1,
		},
		{
			name: "bit flip in a length field",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte {
					b[frameStart(7)+5] ^= 0x40
					return b
				})
			},
			wantMissing: []int{7},
			wantCorrupt: 1,
			wantNext:    n + 1,
		},
		{
			name: "several damaged records in a row",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, segmentFiles(t, dir)[0], func(b []byte) []byte {
					for i := frameStart(10); i < frameStart(13); i++ {
						b[i] = 0xff
					}
					return b
				})
			},
			wantMissing: []int{10, 11, 12},
			wantCorrupt: 3,
			wantNext:    n + 1,
		},
		{
			name: "corrupt checkpoint",
			damage: func(t *testing.T, dir string) {
				modifyFile(t, filepath.Join(dir, checkpointName), func(b []byte) []byte { b[20] ^= 1; return b })
			},
			wantNext: n + 1,
		},
		{
			name: "empty last segment file from a crash while creating it",
			damage: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, segmentName(n+1)), nil, 0o640)
			},
			wantNext: n + 1,
		},
		{
			name: "half-written segment header",
			damage: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, segmentName(n+1)), encodeSegmentHeader(n + 1)[:13], 0o640)
			},
			wantNext: n + 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t.TempDir())
			fillLog(t, opts, n)
			tc.damage(t, opts.Dir)

			l := openTest(t, opts)
			es := readAll(t, l)
			missing := map[int]bool{}
			for _, i := range tc.wantMissing {
				missing[i] = true
			}
			var want []int
			for i := range n {
				if !missing[i] {
					want = append(want, i)
				}
			}
			if len(es) != len(want) {
				t.Fatalf("read %d records, want %d", len(es), len(want))
			}
			for k, e := range es {
				i := want[k]
				if e.Offset != gateway.Offset(i+1) || !bytes.Equal(e.Data, payload(i)) {
					t.Fatalf("entry %d = (%d, %q), want (%d, %q)", k, e.Offset, e.Data, i+1, payload(i))
				}
			}
			if got := l.Stats().CorruptSkipped; got != tc.wantCorrupt {
				t.Fatalf("CorruptSkipped = %d, want %d", got, tc.wantCorrupt)
			}

			// The log goes on: new records get fresh offsets and survive.
			ch := make(chan gateway.Offset, 1)
			if err := l.append([]byte("new"), nil, func(off gateway.Offset, err error) {
				if err != nil {
					t.Error(err)
				}
				ch <- off
			}); err != nil {
				t.Fatal(err)
			}
			if off := <-ch; off != tc.wantNext {
				t.Fatalf("next append got offset %d, want %d", off, tc.wantNext)
			}
			l.Close()
			l2 := openTest(t, opts)
			es2 := readAll(t, l2)
			if len(es2) != len(es)+1 || string(es2[len(es2)-1].Data) != "new" {
				t.Fatalf("after second reopen read %d records, want %d ending with %q", len(es2), len(es)+1, "new")
			}
		})
	}
}

func TestRecoverCorruptSealedSegmentAtReadNotOpen(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.SegmentBytes = 4 << 10
	opts.MaxRecordBytes = 1 << 10
	const n = 300
	fillLog(t, opts, n)
	files := segmentFiles(t, opts.Dir)
	if len(files) < 3 {
		t.Fatalf("want at least 3 segments, have %d", len(files))
	}
	// Damage the middle of the first (sealed) segment and its header.
	modifyFile(t, files[0], func(b []byte) []byte {
		b[frameStart(5)+frameHeaderSize] ^= 0xff
		b[2] ^= 1
		return b
	})
	// And cut the tail off the second one: sealed segments are trusted by
	// their size at open, the reader notices.
	var secondBase uint64
	modifyFile(t, files[1], func(b []byte) []byte {
		secondBase, _ = parseSegmentName(filepath.Base(files[1]))
		return b[:len(b)-5]
	})
	l := openTest(t, opts)
	if got := l.Stats().CorruptSkipped; got != 0 {
		t.Fatalf("Open counted %d corrupt records; sealed segments must not be scanned at open", got)
	}
	es := readAll(t, l)
	if got := l.Stats().CorruptSkipped; got != 2 {
		t.Fatalf("CorruptSkipped = %d, want 2", got)
	}
	if len(es) != n-2 {
		t.Fatalf("read %d records, want %d", len(es), n-2)
	}
	thirdBase, _ := parseSegmentName(filepath.Base(files[2]))
	for _, e := range es {
		if e.Offset == 6 || e.Offset == gateway.Offset(thirdBase-1) {
			t.Fatalf("damaged record %d came back", e.Offset)
		}
		if !bytes.Equal(e.Data, payload(int(e.Offset)-1)) {
			t.Fatalf("record %d = %q", e.Offset, e.Data)
		}
	}
	_ = secondBase
}

func TestRecoverScansOnlyPastCheckpoint(t *testing.T) {
	opts := testOptions(t.TempDir())
	const n = 50
	fillLog(t, opts, n)
	// Damage a record before the checkpointed tail: Open must not look at
	// it (it trusts what was fsynced), Read skips it.
	modifyFile(t, segmentFiles(t, opts.Dir)[0], func(b []byte) []byte {
		b[frameStart(3)+frameHeaderSize] ^= 1
		return b
	})
	ck, found, err := readCheckpoint(opts.Dir)
	if err != nil || !found || ck.tailPos != frameStart(n) || ck.tailNext != n+1 {
		t.Fatalf("checkpoint after Close = %+v, %v, %v; want tail at %d, next %d", ck, found, err, frameStart(n), n+1)
	}
	l := openTest(t, opts)
	es := readAll(t, l)
	if len(es) != n-1 || l.Stats().CorruptSkipped != 1 {
		t.Fatalf("read %d, corrupt %d", len(es), l.Stats().CorruptSkipped)
	}
}

func TestCommitCursorSurvivesCrashWithinInterval(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.CursorInterval = 10 * time.Millisecond
	l := openTest(t, opts)
	for i := range 20 {
		if err := appendWait(t, l, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	readN(t, l, 20)
	if err := l.Commit(12); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ck, _, _ := readCheckpoint(opts.Dir)
		if ck.commit == 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("commit not persisted within 5s: %+v", ck)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Simulate a crash: copy the directory as it is now, without Close.
	crashed := t.TempDir()
	for _, name := range []string{checkpointName, segmentName(1)} {
		b, err := os.ReadFile(filepath.Join(opts.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(crashed, name), b, 0o640)
	}
	copts := opts
	copts.Dir = crashed
	l2 := openTest(t, copts)
	es := readAll(t, l2)
	if len(es) != 8 || es[0].Offset != 13 {
		t.Fatalf("after crash read %d records from %d, want 8 from 13", len(es), es[0].Offset)
	}
}
