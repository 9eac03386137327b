package buffer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// The crash test re-executes the test binary as a child that appends (and,
// in "commit" mode, reads and commits) as fast as it can and prints every
// acknowledgement, SIGKILLs it at a random moment, and checks the log the
// child left: every acknowledged record is there exactly once, in order.
const (
	crashDirEnv   = "IOTGW_BUFFER_CRASH_DIR"
	crashModeEnv  = "IOTGW_BUFFER_CRASH_MODE"
	crashRoundEnv = "IOTGW_BUFFER_CRASH_ROUND"
)

func crashOptions(dir, mode string) Options {
	o := Options{
		Dir:            dir,
		SegmentBytes:   64 << 10,
		MaxBytes:       512 << 20,
		MaxRecordBytes: 4 << 10,
		CursorInterval: 5 * time.Millisecond,
	}
	if mode == "interval" {
		o.Sync, o.SyncInterval = SyncInterval, 20*time.Millisecond
	}
	return o
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	// 20 rounds in all: appends only, appends with a consumer committing,
	// and appends under sync "interval" (a killed process loses nothing
	// that reached the page cache, so nothing acknowledged may be lost).
	for _, tc := range []struct {
		mode   string
		rounds int
	}{{"append", 7}, {"commit", 7}, {"interval", 6}} {
		t.Run(tc.mode, func(t *testing.T) { crashRounds(t, tc.mode, tc.rounds) })
	}
}

// TestCrashChild is the child process of TestCrash; run directly it skips.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("only run as TestCrash's child process")
	}
	round, _ := strconv.Atoi(os.Getenv(crashRoundEnv))
	runCrashChild(dir, os.Getenv(crashModeEnv), round)
}

// crashPayload is appender g's seq-th record in a round: an id, then
// padding of varying length so that frames straddle segment ends.
func crashPayload(round, g, seq int) string {
	return fmt.Sprintf("%d-%d-%d:%s", round, g, seq, strings.Repeat("x", (seq*37)%700))
}

func runCrashChild(dir, mode string, round int) {
	l, err := Open(crashOptions(dir, mode), nil)
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
	lines := make(chan string, 1<<16)
	fmt.Println("ready")
	go func() {
		// Write acknowledgements in chunks: one write per line would cost
		// more than the appends.
		var b []byte
		for line := range lines {
			b = append(b[:0], line...)
			for more := true; more && len(b) < 32<<10; {
				select {
				case line := <-lines:
					b = append(b, line...)
				default:
					more = false
				}
			}
			os.Stdout.Write(b)
		}
	}()

	const appenders, inFlight = 16, 4
	for g := range appenders {
		go func() {
			sem := make(chan struct{}, inFlight)
			for seq := 0; ; seq++ {
				sem <- struct{}{}
				p := crashPayload(round, g, seq)
				for {
					err := l.append([]byte(p), nil, func(off gateway.Offset, err error) {
						if err == nil {
							lines <- "a " + strconv.FormatUint(uint64(off), 10) + " " + p + "\n"
						}
						<-sem
					})
					if err == nil {
						break
					}
					if !errors.Is(err, ErrFull) {
						fmt.Printf("error %v\n", err)
						os.Exit(1)
					}
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	if mode == "commit" {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(round), 1))
			for {
				es, err := l.Read(context.Background(), 1+rng.IntN(200), 1<<20)
				if err != nil {
					fmt.Printf("error %v\n", err)
					os.Exit(1)
				}
				if rng.IntN(3) > 0 {
					last := es[len(es)-1].Offset
					if err := l.Commit(last); err != nil {
						fmt.Printf("error %v\n", err)
						os.Exit(1)
					}
					lines <- "c " + strconv.FormatUint(uint64(last), 10) + "\n"
				}
			}
		}()
	}
	select {}
}

// crashState is what the parent knows across rounds.
type crashState struct {
	acked      map[uint64]string // offset -> payload of every acknowledged record
	known      map[uint64]string // offset -> payload of every record read back
	commit     uint64            // cursor found by the last verification
	maxCommit  uint64            // highest commit a child reported
	ackedTotal int
}

func crashRounds(t *testing.T, mode string, rounds int) {
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	st := &crashState{acked: map[uint64]string{}, known: map[uint64]string{}}
	for round := range rounds {
		lines := runCrashRound(t, dir, mode, round, 20*time.Millisecond+time.Duration(rng.IntN(230))*time.Millisecond)
		for _, line := range lines {
			kind, rest, _ := strings.Cut(line, " ")
			switch kind {
			case "a":
				offText, p, ok := strings.Cut(rest, " ")
				off, err := strconv.ParseUint(offText, 10, 64)
				if !ok || err != nil {
					t.Fatalf("round %d: bad line %q", round, line)
				}
				if old, dup := st.acked[off]; dup && old != p {
					t.Fatalf("round %d: offset %d acknowledged twice: %.30q and %.30q", round, off, old, p)
				}
				st.acked[off] = p
				st.ackedTotal++
			case "c":
				if off, err := strconv.ParseUint(rest, 10, 64); err == nil {
					st.maxCommit = max(st.maxCommit, off)
				}
			case "error":
				t.Fatalf("round %d: child: %s", round, rest)
			}
		}
		verifyAfterCrash(t, dir, mode, round, st)
	}
	if st.ackedTotal < 1000 {
		t.Fatalf("only %d records acknowledged in %d rounds: the test did not exercise much", st.ackedTotal, rounds)
	}
	t.Logf("%d rounds, %d records acknowledged, commit cursor %d (highest commit %d)", rounds, st.ackedTotal, st.commit, st.maxCommit)
}

// runCrashRound starts a child, kills it after it ran for d and returns its
// output lines.
func runCrashRound(t *testing.T, dir, mode string, round int, d time.Duration) []string {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashModeEnv+"="+mode, crashRoundEnv+"="+strconv.Itoa(round))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Only whole lines: the kill can cut the child's last write (a
		// pipe write over 4 KiB is not atomic) anywhere, even after the
		// offset of an acknowledgement, leaving its payload short.
		r := bufio.NewReaderSize(out, 64<<10)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			line = strings.TrimSuffix(line, "\n")
			if line == "ready" {
				close(ready)
				continue
			}
			lines = append(lines, line)
		}
		io.Copy(io.Discard, out)
	}()
	select {
	case <-ready:
	case <-done:
		cmd.Wait()
		t.Fatalf("round %d: child exited before it was ready: %v", round, lines)
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("round %d: child not ready within 20s", round)
	}
	time.Sleep(d)
	cmd.Process.Kill() // SIGKILL: no deferred code, no Close
	<-done
	cmd.Wait()
	return lines
}

func verifyAfterCrash(t *testing.T, dir, mode string, round int, st *crashState) {
	t.Helper()
	l, err := Open(crashOptions(dir, mode), nil)
	if err != nil {
		t.Fatalf("round %d: Open after crash: %v", round, err)
	}
	defer l.Close()
	stats := l.Stats()
	commit := uint64(stats.CommitOffset)
	if commit < st.commit {
		t.Fatalf("round %d: commit cursor went back from %d to %d", round, st.commit, commit)
	}
	es := readAll(t, l)
	if stats := l.Stats(); stats.CorruptSkipped != 0 {
		t.Fatalf("round %d: %d records skipped as corrupt after a process crash", round, stats.CorruptSkipped)
	}

	seen := make(map[string]uint64, len(es))
	lastSeq := map[string]int{}
	for i, e := range es {
		off, p := uint64(e.Offset), string(e.Data)
		if off != commit+1+uint64(i) {
			t.Fatalf("round %d: record %d has offset %d, want %d (commit %d)", round, i, off, commit+1+uint64(i), commit)
		}
		if prev, dup := seen[p]; dup {
			t.Fatalf("round %d: payload %.30q at offsets %d and %d", round, p, prev, off)
		}
		seen[p] = off
		if a, ok := st.acked[off]; ok && a != p {
			t.Fatalf("round %d: offset %d holds %.30q, acknowledged as %.30q", round, off, p, a)
		}
		if k, ok := st.known[off]; ok && k != p {
			t.Fatalf("round %d: offset %d holds %.30q, read earlier as %.30q", round, off, p, k)
		}
		id, _, _ := strings.Cut(p, ":")
		parts := strings.Split(id, "-")
		if len(parts) != 3 {
			t.Fatalf("round %d: offset %d holds a payload no child wrote: %.30q", round, off, p)
		}
		r, _ := strconv.Atoi(parts[0])
		g, _ := strconv.Atoi(parts[1])
		seq, _ := strconv.Atoi(parts[2])
		if p != crashPayload(r, g, seq) {
			t.Fatalf("round %d: offset %d holds a damaged payload %.30q", round, off, p)
		}
		key := parts[0] + "-" + parts[1]
		if last, ok := lastSeq[key]; ok && seq <= last {
			t.Fatalf("round %d: appender %s: seq %d after %d", round, key, seq, last)
		}
		lastSeq[key] = seq
		st.known[off] = p
	}
	for off, p := range st.acked {
		if off <= commit {
			continue // committed: delivered, may be gone
		}
		if seen[p] != off {
			t.Fatalf("round %d: acknowledged record %d (%.30q) lost (commit %d, read %d records)", round, off, p, commit, len(es))
		}
	}
	st.commit = commit
}
