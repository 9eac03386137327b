//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/simulator"
)

// soakBrokerPort is the PLAINTEXT port of the soak's own broker (its
// controller takes the next port).
const soakBrokerPort = 19592

// soakTrucks have reference data in Redis; the sensors have none.
const soakTrucks, soakSensors = 30, 10

// A soakFault is one thing that goes wrong, and its repair.
type soakFault struct {
	name string
	do   func()
}

// TestSoakMixedFaults runs trucks over MQTT and sensors over CoAP into one
// gateway that enriches from Redis and delivers to a Kafka broker of its
// own behind a chaos proxy, while faults take turns: the gateway SIGKILLed
// or restarted, Kafka hanging, gone, or restarted, Redis killed, the
// buffer's disk full. Then every message a device was told was received
// must be in Kafka, in order per device and partition, every truck record
// enriched, and the gateway's memory bounded.
//
// It runs for IOTGW_SOAK (a Go duration; default 90s in make test, the
// faults in turn, as many as fit); `make soak` runs it for 15 minutes, the
// faults in a random order (IOTGW_SOAK_SEED picks it).
func TestSoakMixedFaults(t *testing.T) {
	dur, long := 90*time.Second, false
	if v := os.Getenv("IOTGW_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 30*time.Second {
			t.Fatalf("IOTGW_SOAK=%q: want a duration of 30s or more", v)
		}
		dur, long = d, true
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("IOTGW_SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("IOTGW_SOAK_SEED=%q: want a number", v)
		}
		seed = s
	}
	kafkaAddr(t) // the harness is up

	proxy := startChaosProxy(t, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", soakBrokerPort))
	_, proxyPort, _ := strings.Cut(proxy.Addr(), ":")
	k := startKafkaInstance(t, "soak", soakBrokerPort, "KAFKA_ADVERTISED_PORT="+proxyPort)
	rs := startSoakRedis(t)
	prefix := uniqueTopicPrefix(t)
	// As root the buffer gets a file system of its own, which a fault
	// fills up.
	bufDir, root := t.TempDir(), os.Geteuid() == 0
	if root {
		bufDir = mountTmpfs(t, "256m")
	}
	coapAddr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	cfg := ownBrokerConfig(proxy, bufDir, prefix) + fmt.Sprintf(`
enrich:
  # timeout: a slow first lookup on a loaded CI machine would mark Redis
  # down before anything is cached, and records would go unenriched.
  backend: redis
  redis: {addr: "%s", min_backoff: 50ms, max_backoff: 1s}
  timeout: 2s
  cache: {ttl: 2s}
  snapshot: {interval: 1s}
`, rs.addr)
	gw := startGateway(t, cfg, "IOTGW_LOG_LEVEL=warn", "IOTGW_COAP_UDP="+coapAddr)

	// Memory: the peak RSS of every gateway process, read before it is
	// stopped and at the end.
	var maxRSS int64
	peak := func() { maxRSS = max(maxRSS, gw.peakRSS()) }

	faults := []soakFault{
		{"gateway SIGKILLed and started again", func() { peak(); gw.Kill(); gw.Restart() }},
		{"Kafka hangs for 8 s", func() { proxy.SetMode(proxyHang); time.Sleep(8 * time.Second); proxy.SetMode(proxyForward) }},
		{"Redis SIGKILLed, back after 8 s", func() { rs.kill(); time.Sleep(8 * time.Second); rs.start() }},
		{"Kafka gone for 8 s", func() { proxy.SetMode(proxyDown); time.Sleep(8 * time.Second); proxy.SetMode(proxyForward) }},
		{"buffer's disk full for 8 s, Kafka gone meanwhile", func() {
			// With Kafka gone the log cannot free space: every append
			// fails until the ballast goes.
			proxy.SetMode(proxyDown)
			free := fillDisk(t, bufDir)
			time.Sleep(8 * time.Second)
			free()
			proxy.SetMode(proxyForward)
		}},
		{"gateway stopped (SIGTERM) and started again", func() { peak(); gw.Stop(); gw.Restart() }},
		{"Kafka broker restarted", func() { k.Stop(); time.Sleep(2 * time.Second); k.Start() }},
		{"gateway SIGKILLed and started again while Kafka is gone", func() {
			proxy.SetMode(proxyDown)
			time.Sleep(3 * time.Second)
			peak()
			gw.Kill()
			gw.Restart()
			time.Sleep(3 * time.Second)
			proxy.SetMode(proxyForward)
		}},
		{"gateway restarted while Redis is dead (enriches from its snapshot)", func() {
			rs.kill()
			time.Sleep(2 * time.Second)
			peak()
			gw.Stop()
			gw.Restart()
			time.Sleep(4 * time.Second)
			rs.start()
		}},
	}

	if !root {
		faults = slices.DeleteFunc(faults, func(f soakFault) bool { return strings.Contains(f.name, "disk full") })
		t.Log("not root: no disk-full fault (it mounts a tmpfs for the buffer)")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type simResult struct {
		rep *simulator.Report
		err error
	}
	simDone := make(chan simResult, 1)
	go func() {
		rep, err := simulator.Run(ctx, simulator.Options{
			Broker: gw.MQTT, CoAP: coapAddr, Trucks: soakTrucks, Sensors: soakSensors, Rate: 20, SensorRate: 5, Jitter: 0.3,
			Duration: dur, QoS: simulator.QoS(1), InFlight: 20, Seed: int64(seed),
			ReconnectMin: 20 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
			AckTimeout: 5 * time.Second, DrainTimeout: 30 * time.Second,
		})
		simDone <- simResult{rep, err}
	}()

	// The faults take turns, with 4 s of calm between them and none in the
	// last 10 s, so the run ends healthy.
	rng := rand.New(rand.NewPCG(seed, 17))
	var log []string
	start := time.Now()
	time.Sleep(4 * time.Second)
	for i := 0; time.Since(start) < dur-10*time.Second; i++ {
		f := faults[i%len(faults)]
		if long {
			f = faults[rng.IntN(len(faults))]
		}
		at := time.Since(start)
		f.do()
		log = append(log, fmt.Sprintf("%6.1fs %s (%s)", at.Seconds(), f.name, (time.Since(start)-at).Round(100*time.Millisecond)))
		time.Sleep(4 * time.Second)
	}
	sr := <-simDone
	if sr.err != nil {
		t.Fatal(sr.err)
	}
	rep := sr.rep
	t.Logf("soak for %s, seed %d, %d faults:\n%s", dur, seed, len(log), strings.Join(log, "\n"))
	if !long && len(log) < 6 {
		t.Errorf("only %d faults happened", len(log))
	}
	if rep.Acked < int64(dur.Seconds())*soakTrucks*5 {
		t.Fatalf("only %d messages acked: the load did not run (report %+v)", rep.Acked, rep)
	}

	waitDrained(t, gw, 2*time.Minute)
	topics := append(simTopics(prefix), prefix+".climate")
	res := verifyEventually(t, k.Addr, topics, rep, time.Minute)
	var sb strings.Builder
	rep.Print(&sb)
	res.Print(&sb)
	peak()
	t.Logf("largest gateway RSS %.1f MiB\n%s", float64(maxRSS)/(1<<20), sb.String())
	if res.Missing != 0 || res.OutOfOrder != 0 || !res.OK() {
		t.Fatalf("acknowledged messages lost or reordered:\n%s\ngateway log:\n%s", sb.String(), tail(gw.AllLogs(), 60))
	}
	for _, tr := range res.Topics {
		if tr.Topic == prefix+".climate" && tr.Records == 0 {
			t.Errorf("no CoAP sensor record reached Kafka")
		}
	}
	if maxRSS > 256<<20 {
		t.Errorf("gateway RSS reached %.0f MiB; the buffer holds the backlog, not memory", float64(maxRSS)/(1<<20))
	}

	// Enrichment survives Redis dying (cache) and the gateway restarting
	// with Redis dead or alive (snapshot): every truck record carries its ref.
	var total, unenriched int
	for _, m := range kafkaReadAll(t, k.Addr, prefix+".position") {
		var env struct {
			Device string         `json:"device"`
			Ref    map[string]any `json:"ref"`
		}
		if err := json.Unmarshal(m.Value, &env); err != nil {
			t.Fatalf("record at offset %d is not an envelope: %v", m.Offset, err)
		}
		total++
		if env.Ref == nil || env.Ref["fleet"] != "soak" {
			unenriched++
			if unenriched <= 3 {
				t.Logf("not enriched: %s", m.Value)
			}
		}
	}
	t.Logf("enrichment: %d of %d position records without ref", unenriched, total)
	if total == 0 || unenriched > 0 {
		t.Errorf("%d of %d truck position records were not enriched", unenriched, total)
	}
}

// soakRedis is a redis-server the soak kills and starts again on the same
// port, with an append-only file fsynced on every write so the reference
// data outlives a SIGKILL.
type soakRedis struct {
	t    *testing.T
	addr string
	args []string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func startSoakRedis(t *testing.T) *soakRedis {
	t.Helper()
	port := freePort(t)
	r := &soakRedis{t: t, addr: fmt.Sprintf("127.0.0.1:%d", port),
		args: []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "yes", "--appendfsync", "always", "--dir", t.TempDir()}}
	r.start()
	t.Cleanup(r.kill)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	ctx := context.Background()
	for i := 1; i <= soakTrucks; i++ {
		if err := rdb.HSet(ctx, fmt.Sprintf("iotgw:device:truck-%04d", i), "fleet", "soak", "driver", fmt.Sprintf("driver %d", i)).Err(); err != nil {
			t.Fatalf("seeding redis: %v", err)
		}
	}
	return r
}

func (r *soakRedis) start() {
	r.t.Helper()
	cmd := exec.Command("redis-server", r.args...)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("redis-server: %v", err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *soakRedis) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// peakRSS is the running gateway process's peak resident memory
// (VmHWM), 0 if it cannot be read.
func (g *gatewayProc) peakRSS() int64 {
	hwm, _ := g.procStatusBytes("VmHWM")
	return hwm
}

// freeUDPPort returns a UDP port free on 127.0.0.1 a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
