//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/simulator"
)

// TestDiskFullBuffer puts the buffer on a 3 MiB tmpfs while Kafka is
// unreachable: the file system fills, devices get no success acks for what
// could not be stored (backpressure), the gateway does not crash, and once
// Kafka is back and the log is drained, ingest resumes. Nothing acked is
// lost.
func TestDiskFullBuffer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; CI runs as root")
	}
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	dir := mountTmpfs(t, "3m")

	proxyAddr := "127.0.0.1:" + itoa(freePort(t))
	cfg := baseConfig(proxyAddr, dir, prefix) + `
buffer:
  max_bytes: 64MiB
  segment_bytes: 512KiB
  max_record_bytes: 64KiB
`
	cfg = strings.Replace(cfg, "buffer:\n  dir: "+dir+"\n", "", 1)
	cfg = strings.Replace(cfg, "buffer:\n  max_bytes", "buffer:\n  dir: "+dir+"\n  max_bytes", 1)
	gw := startGateway(t, cfg, "IOTGW_LOG_LEVEL=error", "IOTGW_EGRESS_RETRY_MAX=200ms")

	ctx := context.Background()
	load := simulator.Options{Broker: gw.MQTT, Trucks: 5, Rate: 0, InFlight: 10, Duration: 6 * time.Second,
		Protocol: "5", QoS: simulator.QoS(1), Seed: 8, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	full, err := simulator.Run(ctx, load)
	if err != nil {
		t.Fatal(err)
	}
	if full.Refused+full.Errors == 0 {
		t.Fatalf("the 3 MiB file system never filled: %d acked, nothing refused", full.Acked)
	}
	if !strings.Contains(httpGet(t, "http://"+gw.HTTP+"/healthz"), "ok") {
		t.Fatal("gateway not healthy after the disk filled")
	}

	stop := startProxy(t, proxyAddr, broker)
	defer stop()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st struct {
			Buffer struct {
				Records int64 `json:"records"`
			} `json:"buffer"`
		}
		json.Unmarshal([]byte(httpGet(t, "http://"+gw.HTTP+"/status")), &st)
		if st.Buffer.Records == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("buffer not drained after Kafka came back: %d records", st.Buffer.Records)
		}
		time.Sleep(200 * time.Millisecond)
	}
	load.Rate, load.Duration, load.FirstDevice = 50, 3*time.Second, 101
	after, err := simulator.Run(ctx, load)
	if err != nil {
		t.Fatal(err)
	}
	if after.Acked == 0 || after.Refused+after.Errors > 0 {
		t.Fatalf("ingest did not resume after space freed: acked %d refused %d errors %d", after.Acked, after.Refused, after.Errors)
	}
	waitDrained(t, gw, 60*time.Second)
	for _, rep := range []*simulator.Report{full, after} {
		res := verifyEventually(t, broker, simTopics(prefix), rep, 60*time.Second)
		if res.Missing != 0 || !res.OK() {
			var sb strings.Builder
			res.Print(&sb)
			t.Fatalf("acknowledged messages lost around a full disk:\n%s", sb.String())
		}
	}
	t.Logf("disk full: %d acked, %d refused, %d errors; after recovery: %d acked, none refused", full.Acked, full.Refused, full.Errors, after.Acked)
}

// mountTmpfs mounts a tmpfs of size (mount's syntax: 3m, 256m) on a fresh
// temporary directory, unmounted when the test ends. It needs root.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	// Registered after TempDir's cleanup, so it runs before the removal.
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillDisk writes a ballast file in dir until the file system has no room
// left (ENOSPC), and returns a function that removes it.
func fillDisk(t *testing.T, dir string) (free func()) {
	t.Helper()
	name := filepath.Join(dir, "ballast")
	f, err := os.Create(name)
	if err != nil {
		t.Fatalf("ballast: %v", err)
	}
	defer f.Close()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatalf("statfs %s: %v", dir, err)
	}
	// Most of the room at once, then page by page up to the last byte.
	if n := int64(st.Bavail) * st.Bsize; n > 1<<20 {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, n-1<<20); err != nil {
			t.Fatalf("fallocate ballast: %v", err)
		}
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			t.Fatal(err)
		}
	}
	page := make([]byte, 4096)
	for {
		if _, err := f.Write(page); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("ballast: %v", err)
			}
			break
		}
	}
	// A byte at a time fills the partial page a 4 KiB write left.
	for {
		if _, err := f.Write(page[:1]); err != nil {
			break
		}
	}
	return func() {
		if err := os.Remove(name); err != nil {
			t.Errorf("remove ballast: %v", err)
		}
	}
}
