//go:build integration

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/gateway"
)

// kafkaInstance is a broker of the test harness started for one test
// (scripts/kafka.sh with its own KAFKA_INSTANCE and ports), so the test can
// stop and restart it without touching the shared broker.
type kafkaInstance struct {
	t    *testing.T
	env  []string
	Addr string // PLAINTEXT bootstrap (the real port, not the advertised one)
}

// startKafkaInstance brings up instance name on port (and port+1 for its
// controller, more with SASL/TLS). extra holds more kafka.sh variables
// (KAFKA_SASL=1, KAFKA_ADVERTISED_PORT=...). The instance is removed when
// the test ends.
func startKafkaInstance(t *testing.T, name string, port int, extra ...string) *kafkaInstance {
	t.Helper()
	k := &kafkaInstance{t: t, Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	k.env = append([]string{"KAFKA_INSTANCE=" + name, "KAFKA_PORT=" + strconv.Itoa(port)}, extra...)
	k.script("down") // leftovers of an interrupted run
	t.Cleanup(func() { k.script("down") })
	if out, err := k.run("up"); err != nil {
		t.Fatalf("kafka.sh up (instance %s): %v\n%s", name, err, out)
	}
	return k
}

func (k *kafkaInstance) run(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(repoRoot, "scripts/kafka.sh"), args...)
	cmd.Env = append(os.Environ(), k.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (k *kafkaInstance) script(args ...string) string {
	out, _ := k.run(args...)
	return out
}

// Stop stops the broker and keeps its data.
func (k *kafkaInstance) Stop() {
	k.t.Helper()
	if out, err := k.run("stop"); err != nil {
		k.t.Fatalf("kafka.sh stop: %v\n%s", err, out)
	}
}

// Start starts the stopped broker again on its data.
func (k *kafkaInstance) Start() {
	k.t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot, "scripts/kafka.sh"), "up")
	cmd.Env = append(append(os.Environ(), k.env...), "KAFKA_KEEP_DATA=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		k.t.Fatalf("kafka.sh up (keep data): %v\n%s", err, out)
	}
}

// Listeners maps security protocol to address (kafka.sh listeners).
func (k *kafkaInstance) Listeners() map[string]string {
	k.t.Helper()
	out, err := k.run("listeners")
	if err != nil {
		k.t.Fatalf("kafka.sh listeners: %v\n%s", err, out)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if name, addr, ok := strings.Cut(sc.Text(), " "); ok {
			m[name] = addr
		}
	}
	return m
}

// TLSDir is where kafka.sh put the instance's CA and client certificate.
func (k *kafkaInstance) TLSDir() string {
	return strings.TrimSpace(k.script("tls-dir"))
}

// Proxy modes.
const (
	proxyForward = iota // pass bytes both ways
	proxyHang           // accept connections, pass nothing: a broker that answers nothing
	proxyDown           // close every connection at once: a broker that is gone
)

// chaosProxy is a TCP proxy whose behaviour tests switch at run time.
type chaosProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	mode  int
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startChaosProxy(t *testing.T, listen, target string) *chaosProxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &chaosProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *chaosProxy) Addr() string { return p.ln.Addr().String() }

func (p *chaosProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *chaosProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		switch mode {
		case proxyDown:
			c.Close()
			continue
		case proxyHang:
			// Held open, never answered, closed at the next mode change.
			if !p.track(c) {
				c.Close()
			}
			continue
		}
		u, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c) || !p.track(u) {
			c.Close()
			u.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(u, c)
		go p.pipe(c, u)
	}
}

// pipe copies src to dst, holding each chunk while the proxy hangs.
func (p *chaosProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.mode == proxyHang && p.conns != nil {
				p.cond.Wait()
			}
			ok := p.mode == proxyForward && p.conns != nil
			p.mu.Unlock()
			if !ok {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// SetMode switches behaviour; leaving hang or entering down drops every
// connection (clients have given up on them anyway).
func (p *chaosProxy) SetMode(mode int) {
	p.mu.Lock()
	old := p.mode
	p.mode = mode
	var drop []net.Conn
	if mode == proxyDown || old == proxyHang {
		for c := range p.conns {
			drop = append(drop, c)
		}
		clear(p.conns)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

func (p *chaosProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.cond.Broadcast()
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
}

// kafkaEndOffsets sums the high watermarks of topics on broker (0 for topics
// that do not exist yet).
func kafkaEndOffsets(ctx context.Context, broker string, topics ...string) (int64, error) {
	client := freshClient(broker)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return 0, err
	}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, t := range md.Topics {
		if t.Error != nil {
			continue
		}
		for _, p := range t.Partitions {
			req.Topics[t.Name] = append(req.Topics[t.Name], kafka.LastOffsetOf(p.ID))
		}
	}
	if len(req.Topics) == 0 {
		return 0, nil
	}
	resp, err := client.ListOffsets(ctx, req)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return 0, p.Error
			}
			n += p.LastOffset
		}
	}
	return n, nil
}

// kafkaGatewayStatus is the part of /status the Kafka tests read.
type kafkaGatewayStatus struct {
	Buffer struct {
		Records int64 `json:"records"`
	} `json:"buffer"`
	Egress struct {
		Delivered   uint64 `json:"delivered"`
		DeadLetters uint64 `json:"dead_letters"`
		Retries     uint64 `json:"retries"`
		KafkaUp     bool   `json:"kafka_up"`
		LastError   string `json:"last_error"`
	} `json:"egress"`
}

func (g *gatewayProc) egressStatus(t *testing.T) kafkaGatewayStatus {
	t.Helper()
	var st kafkaGatewayStatus
	resp, err := http.Get("http://" + g.HTTP + "/status")
	if err != nil {
		t.Fatalf("gateway /status: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("gateway /status: %v", err)
	}
	return st
}

// processRSS is the gateway process's resident memory in bytes.
func (g *gatewayProc) processRSS(t *testing.T) int64 {
	t.Helper()
	rss, ok := g.procStatusBytes("VmRSS")
	if !ok {
		t.Fatal("gateway rss: no VmRSS in /proc/PID/status")
	}
	return rss
}

// procStatusBytes reads a kB field of the running gateway process's
// /proc/PID/status (VmRSS, VmHWM) in bytes.
func (g *gatewayProc) procStatusBytes(field string) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// kafkaReadAll reads every record of topic (all partitions) from the start up to
// the end offsets it has now, with a plain PLAINTEXT client.
func kafkaReadAll(t *testing.T, broker, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := freshClient(broker)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %v %+v", topic, err, md)
	}
	var out []kafka.Message
	for _, p := range md.Topics[0].Partitions {
		offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(p.ID)}}})
		if err != nil {
			t.Fatal(err)
		}
		end := offs.Topics[topic][0].LastOffset
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("read %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		r.Close()
	}
	return out
}

// newTopicSink builds a KafkaSink, closed when the test ends, and creates
// topic with 3 partitions; ctx bounds the test's Kafka calls (60 s).
func newTopicSink(t *testing.T, opts gateway.KafkaOptions, batchRecords int, topic string) (*gateway.KafkaSink, context.Context) {
	t.Helper()
	sink, err := gateway.NewKafkaSink(opts, batchRecords, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := sink.EnsureTopic(ctx, gateway.TopicSpec{Name: topic, Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	return sink, ctx
}

// kwaitFor polls cond until it is true or timeout passes.
func kwaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ktail is the last n lines of s.
func ktail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freshClient is a kafka.Client with a transport of its own: the default
// transport caches metadata for seconds, so it may not know a topic that was
// just created.
func freshClient(broker string) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
}
