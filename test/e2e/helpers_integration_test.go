//go:build integration

// Package e2e runs the iotgw binary against the real services of the test
// harness (Apache Kafka from scripts/kafka.sh, Redis from scripts/redis.sh)
// and real third-party clients (mosquitto_pub, kcat).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

var (
	binPath  string
	repoRoot string
)

func TestMain(m *testing.M) {
	wd, _ := os.Getwd()
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	dir, err := os.MkdirTemp("", "iotgw-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "iotgw")
	build := exec.Command("go", "build", "-o", binPath, "./cmd/iotgw")
	build.Dir = repoRoot
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build iotgw:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// kafkaAddr is the harness broker; the test fails (not skips) without it.
func kafkaAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("IOTGW_TEST_KAFKA")
	if addr == "" {
		addr = "127.0.0.1:19092"
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("Kafka test broker %s unreachable (run `make kafka-up` or set IOTGW_TEST_KAFKA): %v", addr, err)
	}
	c.Close()
	return addr
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// uniqueTopicPrefix keeps tests that share one Kafka apart.
func uniqueTopicPrefix(t *testing.T) string {
	return fmt.Sprintf("e2e%d%s", time.Now().UnixNano()%1e9, strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
}

type gatewayProc struct {
	t        *testing.T
	cmd      *exec.Cmd
	MQTT     string
	HTTP     string
	logPath  string
	done     chan error
	cfgPath  string
	env      []string
	mqttPort int
}

// startGateway runs `iotgw run` with the config text and waits for /readyz.
func startGateway(t *testing.T, cfg string, env ...string) *gatewayProc {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "iotgw.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gatewayProc{t: t, cfgPath: cfgPath, mqttPort: freePort(t), env: env}
	g.start()
	t.Cleanup(func() { g.Stop() })
	return g
}

func (g *gatewayProc) start() {
	t := g.t
	t.Helper()
	httpPort := freePort(t)
	g.MQTT = fmt.Sprintf("127.0.0.1:%d", g.mqttPort)
	g.HTTP = fmt.Sprintf("127.0.0.1:%d", httpPort)
	g.logPath = filepath.Join(filepath.Dir(g.cfgPath), fmt.Sprintf("gateway-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(binPath, "run", "--config", g.cfgPath)
	g.cmd.Env = append(os.Environ(), "IOTGW_MQTT_TCP="+g.MQTT, "IOTGW_HTTP_LISTEN="+g.HTTP, "IOTGW_COAP_UDP=off")
	g.cmd.Env = append(g.cmd.Env, g.env...)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.done = make(chan error, 1)
	go func() { g.done <- g.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + g.HTTP + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("gateway exited before ready: %v\n%s", err, g.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready after 20s\n%s", g.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Logs returns the gateway's output so far.
func (g *gatewayProc) Logs() string {
	b, _ := os.ReadFile(g.logPath)
	return string(b)
}

// AllLogs returns the output of every start of this gateway, oldest first.
func (g *gatewayProc) AllLogs() string {
	paths, _ := filepath.Glob(filepath.Join(filepath.Dir(g.cfgPath), "gateway-*.log"))
	sort.Strings(paths)
	var sb strings.Builder
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		sb.Write(b)
	}
	return sb.String()
}

// Kill sends SIGKILL and waits for the process to be gone.
func (g *gatewayProc) Kill() {
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.done
	g.done <- errors.New("killed")
}

// Restart starts the same config (same buffer dir, same MQTT port) again.
func (g *gatewayProc) Restart() { g.start() }

// Stop sends SIGTERM and waits up to 15 s.
func (g *gatewayProc) Stop() {
	if g.cmd.ProcessState != nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(15 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
		g.t.Errorf("gateway did not stop within 15s of SIGTERM\n%s", g.Logs())
	}
}

// consume reads every record of topic from the beginning until want records
// arrived (or timeout), across all partitions.
func consume(t *testing.T, broker, topic string, want int, timeout time.Duration) []kafka.Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var parts []kafka.Partition
	for {
		conn, err := kafka.Dial("tcp", broker)
		if err == nil {
			parts, err = conn.ReadPartitions(topic)
			conn.Close()
		}
		if err == nil && len(parts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s never appeared: %v", topic, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var mu sync.Mutex
	var out []kafka.Message
	var wg sync.WaitGroup
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(out) }
	for _, p := range parts {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond})
			defer r.Close()
			for {
				rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
				m, err := r.ReadMessage(rctx)
				rcancel()
				if err == nil {
					mu.Lock()
					out = append(out, m)
					mu.Unlock()
					continue
				}
				if ctx.Err() != nil || count() >= want {
					return
				}
			}
		}(p.ID)
	}
	wg.Wait()
	if len(out) < want {
		t.Fatalf("topic %s: got %d records, want %d", topic, len(out), want)
	}
	return out
}

// javaPartitions asks Kafka's own Java client code which partition each key
// gets (test/javatools/Partition.java over the harness's jars).
func javaPartitions(t *testing.T, n int, keys []string) map[string]int {
	t.Helper()
	cp, err := exec.Command(filepath.Join(repoRoot, "scripts/kafka.sh"), "classpath").Output()
	if err != nil {
		t.Fatalf("kafka classpath: %v", err)
	}
	args := append([]string{"-cp", strings.TrimSpace(string(cp)), filepath.Join(repoRoot, "test/javatools/Partition.java"), strconv.Itoa(n)}, keys...)
	out, err := exec.Command("java", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("Partition.java: %v\n%s", err, out)
	}
	parts := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			continue
		}
		p, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("Partition.java output %q", sc.Text())
		}
		parts[k] = p
	}
	if len(parts) != len(keys) {
		t.Fatalf("Partition.java gave %d partitions for %d keys:\n%s", len(parts), len(keys), out)
	}
	return parts
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func run(t *testing.T, stdin io.Reader, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func newCmd(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

func itoa(n int) string { return strconv.Itoa(n) }

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
