package buffer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// mountSmallTmpfs mounts a tmpfs of size bytes on a fresh directory and
// unmounts it when the test ends; it skips the test when that is impossible.
func mountSmallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("disk-full test needs root: it mounts a small tmpfs (mount -t tmpfs -o size=" + size + ")")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("disk-full test: cannot mount a tmpfs (%v: %s)", err, out)
	}
	// Registered after TempDir's cleanup, so it runs before the removal.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func TestDiskFull(t *testing.T) {
	tests := []struct {
		name string
		// fill prepares the file system before the log fills it up.
		fill func(t *testing.T, mnt string)
		// free makes room again given the log and what it acknowledged.
		free func(t *testing.T, mnt string, l *Log, acked int)
		// wantAfterReopen is how many records a reopened log reads back,
		// given how many were acknowledged in total.
		wantAfterReopen func(acked, ackedBeforeFree int) int
	}{
		{
			name: "freed by commit and segment deletion",
			fill: func(*testing.T, string) {},
			free: func(t *testing.T, _ string, l *Log, acked int) {
				es := readAll(t, l)
				if len(es) != acked {
					t.Fatalf("read %d records, %d were acknowledged", len(es), acked)
				}
				if err := l.Commit(es[len(es)-1].Offset); err != nil {
					t.Fatal(err)
				}
			},
			wantAfterReopen: func(acked, before int) int { return acked - before },
		},
		{
			name: "freed by removing another file",
			fill: func(t *testing.T, mnt string) {
				// Leave about 300KiB for the log.
				if err := os.WriteFile(filepath.Join(mnt, "filler"), make([]byte, 1700<<10), 0o640); err != nil {
					t.Fatal(err)
				}
			},
			free: func(t *testing.T, mnt string, _ *Log, _ int) {
				if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
					t.Fatal(err)
				}
			},
			wantAfterReopen: func(acked, _ int) int { return acked },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := mountSmallTmpfs(t, "2m")
			tc.fill(t, mnt)
			opts := Options{
				Dir:            filepath.Join(mnt, "log"),
				SegmentBytes:   64 << 10,
				MaxBytes:       64 << 20, // far more than the file system holds
				MaxRecordBytes: 16 << 10,
				CursorInterval: 10 * time.Millisecond,
			}
			l := openTest(t, opts)
			// Records of 8200 bytes: a write of one needs at least two
			// free pages of the tmpfs, whatever room is left in the
			// segment's last page (a failed group commit is truncated
			// away, and 1000-byte records then sometimes fit in what it
			// leaves there, so the disk was not "still full" for them).
			rec := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("%07d|", i)), 1025) }

			acked := 0
			var fullErr error
			for i := 0; ; i++ {
				err := appendWait(t, l, rec(i))
				if err != nil {
					fullErr = err
					break
				}
				acked++
				if acked > 5000 {
					t.Fatal("2MiB file system never filled up")
				}
			}
			if !errors.Is(fullErr, syscall.ENOSPC) {
				t.Fatalf("append on a full disk: %v, want ENOSPC", fullErr)
			}
			t.Logf("%d records acknowledged before: %v", acked, fullErr)
			// The write may have failed while the checkpointer's new
			// checkpoint file held a page for a moment; take what is left,
			// so that "still full" holds for every record below.
			useUpFreeSpace(t, mnt)
			// Still full: later appends fail too, nothing is acknowledged
			// that is not stored. Right after a failed write they are
			// refused at once (ErrFull, with the write's error), later
			// they are tried and fail.
			for i := range 5 {
				err := appendWait(t, l, rec(acked+i))
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("append %d on a still full disk: %v, want ENOSPC", i, err)
				}
				if i == 0 && !errors.Is(err, ErrFull) {
					t.Fatalf("append right after a failed write: %v, want ErrFull", err)
				}
				time.Sleep(failHold / 2)
			}
			if st := l.Stats(); st.WriteErrors < 2 || st.RejectedFull < 1 || st.LastOffset != gateway.Offset(acked) {
				t.Fatalf("stats on a full disk: %+v", st)
			}
			before := acked
			tc.free(t, mnt, l, acked)

			next := acked + 5
			deadline := time.Now().Add(5 * time.Second)
			for {
				err := appendWait(t, l, rec(next))
				if err == nil {
					break
				}
				if !errors.Is(err, syscall.ENOSPC) || time.Now().After(deadline) {
					t.Fatalf("append after freeing space: %v", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			acked++
			for i := 1; i < 20; i++ {
				if err := appendWait(t, l, rec(next+i)); err != nil {
					t.Fatalf("append %d after freeing space: %v", i, err)
				}
				acked++
			}
			if err := l.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			l2 := openTest(t, opts)
			es := readAll(t, l2)
			if want := tc.wantAfterReopen(acked, before); len(es) != want {
				t.Fatalf("after reopen read %d records, want %d", len(es), want)
			}
			if st := l2.Stats(); st.CorruptSkipped != 0 {
				t.Fatalf("after reopen %d corrupt records", st.CorruptSkipped)
			}
			// The failed records left no trace: offsets stay dense and the
			// records after the failure are the ones appended after it.
			for i, e := range es {
				if i > 0 && e.Offset != es[i-1].Offset+1 {
					t.Fatalf("offset %d after %d", e.Offset, es[i-1].Offset)
				}
				k := int(e.Offset) - 1
				if k >= before {
					k += next - before
				}
				if !bytes.Equal(e.Data, rec(k)) {
					t.Fatalf("record at offset %d is %.16q, want %.16q", e.Offset, e.Data, rec(k))
				}
			}
		})
	}
}

// After a failed write appends are refused (ErrFull, wrapping the write's
// error) for failHold, and the records queued behind the failed batch fail
// with it: otherwise a device's later message could be stored while the one
// that failed is resent after it (test/e2e's TestDiskFullBuffer checks the
// order end to end). After the hold, appends are tried again.
func TestFailedWriteHoldsAppends(t *testing.T) {
	mnt := mountSmallTmpfs(t, "1m")
	l := openTest(t, Options{Dir: filepath.Join(mnt, "log"), SegmentBytes: 1 << 20, MaxBytes: 64 << 20, MaxRecordBytes: 64 << 10})
	rec := bytes.Repeat([]byte("r"), 2000)
	for i := 0; ; i++ {
		if err := appendWait(t, l, rec); err != nil {
			break
		}
		if i > 2000 {
			t.Fatal("the 1 MiB file system never filled")
		}
	}
	time.Sleep(2 * failHold)
	big := bytes.Repeat([]byte("b"), 60<<10)
	if err := appendWait(t, l, big); !errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrFull) {
		t.Fatalf("big record on a full disk: %v, want a write that failed with ENOSPC", err)
	}
	small := []byte("s")
	if err := l.Append(small, func(error) {}); !errors.Is(err, ErrFull) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append right after a failed write: %v, want ErrFull wrapping ENOSPC", err)
	}
	if st := l.Stats(); st.RejectedFull == 0 {
		t.Errorf("refused append not counted: %+v", st)
	}
	time.Sleep(2 * failHold)
	if err := appendWait(t, l, small); errors.Is(err, ErrFull) || err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append after the hold: %v, want it tried (stored, or failed with ENOSPC)", err)
	}
}

// useUpFreeSpace fills the file system mounted at mnt with a file of its own
// until a write fails with ENOSPC.
func useUpFreeSpace(t *testing.T, mnt string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(mnt, "slack"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return
		}
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for {
		if _, err := f.Write(page); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}
