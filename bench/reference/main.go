// Command reference runs the same QoS 1 device load through iotgw and
// through the pipeline people build today — Debian's Mosquitto plus
// Telegraf (inputs.mqtt_consumer -> outputs.kafka, required_acks -1) — into
// the same Apache Kafka, side by side in one run, and reports:
//
//   - the delivered-to-Kafka rate and device-to-Kafka latency at full load;
//   - acknowledged messages lost when Kafka is stopped for 30 s under load;
//   - acknowledged messages lost when the bridge process (Telegraf, or the
//     gateway itself) is SIGKILLed once under load and restarted.
//
// It needs mosquitto (scripts/deps.sh), a Telegraf binary built from the Go
// module proxy (scripts/bench.sh builds it into .cache/tools; never
// committed), the iotgw binary, and scripts/kafka.sh, which it uses to run
// its own Kafka instance (port 19392) so it can stop it.
//
//	go run ./bench/reference -telegraf .cache/tools/telegraf
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/simulator"
)

var (
	telegrafBin = flag.String("telegraf", ".cache/tools/telegraf", "Telegraf binary (custom build with inputs.mqtt_consumer and outputs.kafka)")
	kafkaPort   = flag.Int("kafka-port", 19392, "port of the bench's own Kafka instance")
	trucks      = flag.Int("trucks", 50, "devices")
	messages    = flag.Int("messages", 400, "messages per device in the throughput scenario")
	loadRate    = flag.Float64("rate", 20, "messages/s per device in the fault scenarios")
	outage      = flag.Duration("outage", 30*time.Second, "how long Kafka is stopped")
	only        = flag.String("only", "", "run only these scenarios (comma-separated: throughput,kafka-stop,kill)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/reference:", err)
		os.Exit(1)
	}
}

type result struct {
	delivered, acked, missing int64
	rate                      float64
	p50, p99                  time.Duration
}

func run() error {
	root, _ := os.Getwd()
	work, err := os.MkdirTemp(root, ".bench-reference-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	for _, b := range []string{*telegrafBin, "mosquitto"} {
		if _, err := exec.LookPath(b); err != nil {
			if _, err2 := os.Stat(b); err2 != nil {
				return fmt.Errorf("%s not found (run scripts/bench.sh, which builds Telegraf and installs mosquitto)", b)
			}
		}
	}
	iotgw := filepath.Join(work, "iotgw")
	if out, err := exec.Command("go", "build", "-o", iotgw, "./cmd/iotgw").CombinedOutput(); err != nil {
		return fmt.Errorf("build iotgw: %v\n%s", err, out)
	}
	kafkaUp := func(keep bool) error {
		cmd := exec.Command("scripts/kafka.sh", "up")
		cmd.Env = append(os.Environ(), "KAFKA_INSTANCE=bench", fmt.Sprintf("KAFKA_PORT=%d", *kafkaPort))
		if keep {
			cmd.Env = append(cmd.Env, "KAFKA_KEEP_DATA=1")
		}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	kafkaCmd := func(verb string) error {
		cmd := exec.Command("scripts/kafka.sh", verb)
		cmd.Env = append(os.Environ(), "KAFKA_INSTANCE=bench", fmt.Sprintf("KAFKA_PORT=%d", *kafkaPort))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := kafkaUp(false); err != nil {
		return err
	}
	defer kafkaCmd("down")
	broker := fmt.Sprintf("127.0.0.1:%d", *kafkaPort)

	want := func(s string) bool { return *only == "" || strings.Contains(*only, s) }
	type row struct {
		scenario string
		ref, gw  result
	}
	var rows []row
	sys := []struct {
		name  string
		start func(dir, topic string) (*pipeline, error)
	}{
		{"mosquitto+telegraf", func(dir, topic string) (*pipeline, error) { return startReference(dir, broker, topic) }},
		{"iotgw", func(dir, topic string) (*pipeline, error) { return startGateway(iotgw, dir, broker, topic) }},
	}
	scenario := func(name string, load simulator.Options, fault func(p *pipeline) error) (row, error) {
		r := row{scenario: name}
		for i, s := range sys {
			topic := fmt.Sprintf("bench.%s.%d.%d", strings.ReplaceAll(name, " ", "-"), i, time.Now().UnixNano()%1e6)
			dir := filepath.Join(work, fmt.Sprintf("%s-%d", name, i))
			os.MkdirAll(dir, 0o755)
			p, err := s.start(dir, topic)
			if err != nil {
				return r, fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Fprintf(os.Stderr, "== %s: %s\n", name, s.name)
			res, err := measure(p, broker, topic, load, fault)
			p.stop()
			if err != nil {
				return r, fmt.Errorf("%s %s: %w", name, s.name, err)
			}
			if i == 0 {
				r.ref = res
			} else {
				r.gw = res
			}
		}
		return r, nil
	}

	if want("throughput") {
		r, err := scenario("throughput", simulator.Options{Trucks: *trucks, Messages: *messages, Rate: 0, InFlight: 20}, nil)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	steady := simulator.Options{Trucks: *trucks, Rate: *loadRate, Duration: *outage + 20*time.Second, InFlight: 20}
	if want("kafka-stop") {
		r, err := scenario("kafka-stop", steady, func(p *pipeline) error {
			time.Sleep(5 * time.Second)
			if err := kafkaCmd("stop"); err != nil {
				return err
			}
			time.Sleep(*outage)
			return kafkaUp(true)
		})
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	if want("kill") {
		short := steady
		short.Duration = 25 * time.Second
		r, err := scenario("kill", short, func(p *pipeline) error {
			time.Sleep(8 * time.Second)
			return p.killAndRestart()
		})
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}

	fmt.Printf("## Against the reference pipeline (Mosquitto + Telegraf)\n\n")
	fmt.Printf("`go run ./bench/reference -trucks %d -messages %d -rate %g -outage %s` — same devices (the simulator, MQTT 3.1.1, QoS 1), same Apache Kafka (own instance, acks all), one run.\n\n", *trucks, *messages, *loadRate, *outage)
	fmt.Printf("| scenario | pipeline | acked by the broker | in Kafka (distinct) | acked but lost | delivered rate | latency p50 / p99 |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		for _, x := range []struct {
			name string
			res  result
		}{{"mosquitto+telegraf", r.ref}, {"iotgw", r.gw}} {
			fmt.Printf("| %s | %s | %d | %d | **%d** | %.0f msg/s | %s / %s |\n", r.scenario, x.name, x.res.acked, x.res.delivered, x.res.missing, x.res.rate, x.res.p50.Round(time.Millisecond), x.res.p99.Round(time.Millisecond))
		}
	}
	for _, r := range rows {
		if r.scenario == "throughput" && r.ref.rate > 0 {
			fmt.Printf("\niotgw ÷ reference delivered rate at full load: **%.2f** (target ≥ 1.5)\n", r.gw.rate/r.ref.rate)
			fmt.Printf("\nRESULT reference_rate_ratio %.3f 1.5\n", r.gw.rate/r.ref.rate)
		}
		fmt.Printf("RESULT reference_lost_%s_ref %d 0\nRESULT reference_lost_%s_iotgw %d 0\n", r.scenario, r.ref.missing, r.scenario, r.gw.missing)
	}
	return nil
}

// pipeline is a running system under test: where devices connect and how
// to kill and restart its bridge.
type pipeline struct {
	mqtt  string
	procs []*exec.Cmd
	// bridge restarts the process that moves data to Kafka.
	bridge  int
	restart func() (*exec.Cmd, error)
}

func (p *pipeline) stop() {
	for i := len(p.procs) - 1; i >= 0; i-- {
		c := p.procs[i]
		if c.ProcessState == nil {
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				c.Process.Kill()
				<-done
			}
		}
	}
}

func (p *pipeline) killAndRestart() error {
	c := p.procs[p.bridge]
	c.Process.Signal(syscall.SIGKILL)
	c.Wait()
	n, err := p.restart()
	if err != nil {
		return err
	}
	p.procs[p.bridge] = n
	return nil
}

func startReference(dir, broker, topic string) (*pipeline, error) {
	port := freePort()
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port)), 0o644)
	mq := exec.Command("mosquitto", "-c", conf)
	mq.Stderr = logFile(dir, "mosquitto.log")
	if err := mq.Start(); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitListen(addr); err != nil {
		mq.Process.Kill()
		return nil, err
	}
	tconf := filepath.Join(dir, "telegraf.conf")
	os.WriteFile(tconf, []byte(fmt.Sprintf(`[agent]
  interval = "1s"
  flush_interval = "100ms"
  flush_jitter = "0s"
  metric_batch_size = 1000
  metric_buffer_limit = 10000
  omit_hostname = true
  quiet = true

[[inputs.mqtt_consumer]]
  servers = ["tcp://%s"]
  topics = ["devices/#"]
  qos = 1
  persistent_session = true
  client_id = "telegraf-bridge"
  data_format = "value"
  data_type = "string"

[[outputs.kafka]]
  brokers = ["%s"]
  topic = "%s"
  required_acks = -1
  max_retry = 3
  data_format = "json"
`, addr, broker, topic)), 0o644)
	startTelegraf := func() (*exec.Cmd, error) {
		tg := exec.Command(*telegrafBin, "--config", tconf)
		tg.Stdout, tg.Stderr = logFile(dir, "telegraf.log"), logFile(dir, "telegraf.log")
		if err := tg.Start(); err != nil {
			return nil, err
		}
		// Telegraf subscribes a moment after start; wait for its session.
		time.Sleep(3 * time.Second)
		return tg, nil
	}
	tg, err := startTelegraf()
	if err != nil {
		mq.Process.Kill()
		return nil, err
	}
	return &pipeline{mqtt: addr, procs: []*exec.Cmd{mq, tg}, bridge: 1, restart: startTelegraf}, nil
}

func startGateway(bin, dir, broker, topic string) (*pipeline, error) {
	port := freePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(dir, "iotgw.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`kafka: {brokers: ["%s"]}
buffer: {dir: "%s"}
auth: {mode: open}
mqtt: {tcp: "%s"}
http: {listen: "off"}
coap: {udp: "off"}
log: {level: warn}
routes:
  - {match: "devices/#", topic: "%s"}
`, broker, filepath.Join(dir, "buffer"), addr, topic)), 0o644)
	start := func() (*exec.Cmd, error) {
		c := exec.Command(bin, "run", "--config", cfg)
		c.Stdout, c.Stderr = logFile(dir, "iotgw.log"), logFile(dir, "iotgw.log")
		if err := c.Start(); err != nil {
			return nil, err
		}
		return c, waitListen(addr)
	}
	c, err := start()
	if err != nil {
		return nil, err
	}
	return &pipeline{mqtt: addr, procs: []*exec.Cmd{c}, bridge: 0, restart: start}, nil
}

// measure runs the load (and the fault, concurrently), then reads the
// topic until nothing new arrives, and compares with what was acked.
func measure(p *pipeline, broker, topic string, load simulator.Options, fault func(*pipeline) error) (result, error) {
	var res result
	load.Broker = p.mqtt
	load.Protocol = "3.1.1"
	load.QoS = simulator.QoS(1)
	load.Seed = 5
	load.ReconnectMin, load.ReconnectMax = 50*time.Millisecond, time.Second
	load.DrainTimeout = 20 * time.Second
	faultErr := make(chan error, 1)
	if fault != nil {
		go func() { faultErr <- fault(p) }()
	} else {
		faultErr <- nil
	}
	start := time.Now()
	rep, err := simulator.Run(context.Background(), load)
	if err != nil {
		return res, err
	}
	if err := <-faultErr; err != nil {
		return res, fmt.Errorf("fault: %w", err)
	}
	res.acked = rep.Acked
	found, times, lat, err := readAll(broker, topic, rep.RunID, rep.Acked)
	if err != nil {
		return res, err
	}
	for dev, d := range rep.Devices {
		for _, r := range d.Acked.Ranges() {
			for s := r.First; s <= r.Last; s++ {
				if !found[dev][s] {
					res.missing++
				}
			}
		}
	}
	for _, m := range found {
		res.delivered += int64(len(m))
	}
	if len(times) > 0 {
		last := times[len(times)-1]
		res.rate = float64(res.delivered) / last.Sub(start).Seconds()
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		res.p50, res.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return res, nil
}

// readAll consumes topic from the beginning until want distinct messages of
// this run arrived or nothing new came for 10 s. It understands both the
// iotgw envelope and Telegraf's JSON ({"fields":{"value":"<payload>"}}).
func readAll(broker, topic, runID string, want int64) (map[string]map[uint64]bool, []time.Time, []time.Duration, error) {
	found := map[string]map[uint64]bool{}
	var times []time.Time
	var lat []time.Duration
	var mu sync.Mutex
	var n int64
	// The pipeline may still be creating the topic when the load ends.
	var parts []kafka.Partition
	for wait := time.Now().Add(30 * time.Second); ; {
		conn, err := kafka.Dial("tcp", broker)
		if err != nil {
			return nil, nil, nil, err
		}
		parts, err = conn.ReadPartitions(topic)
		conn.Close()
		if err == nil && len(parts) > 0 {
			break
		}
		if time.Now().After(wait) {
			fmt.Fprintf(os.Stderr, "topic %s: %v (nothing arrived)\n", topic, err)
			return found, nil, nil, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "reading %s: %d partitions, want %d\n", topic, len(parts), want)
	var wg sync.WaitGroup
	lastNew := time.Now()
	for _, pt := range parts {
		wg.Add(1)
		go func(pid int) {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: pid, MaxBytes: 10 << 20, MaxWait: 200 * time.Millisecond})
			defer r.Close()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				m, err := r.ReadMessage(ctx)
				cancel()
				mu.Lock()
				done := n >= want || time.Since(lastNew) > 10*time.Second
				mu.Unlock()
				if err != nil {
					if done || errors.Is(err, io.EOF) {
						return
					}
					continue
				}
				dev, seq, ts, ok := parse(m.Value, runID)
				if !ok {
					if os.Getenv("BENCH_DEBUG") != "" {
						fmt.Fprintf(os.Stderr, "unparsed: %.300s\n", m.Value)
					}
					continue
				}
				mu.Lock()
				if found[dev] == nil {
					found[dev] = map[uint64]bool{}
				}
				if !found[dev][seq] {
					found[dev][seq] = true
					n++
					lastNew = time.Now()
					times = append(times, m.Time)
					lat = append(lat, m.Time.Sub(ts))
				}
				mu.Unlock()
			}
		}(pt.ID)
	}
	wg.Wait()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	return found, times, lat, nil
}

func parse(v []byte, runID string) (string, uint64, time.Time, bool) {
	var p struct {
		Device string    `json:"device"`
		Seq    uint64    `json:"seq"`
		TS     time.Time `json:"ts"`
		Run    string    `json:"run"`
	}
	var env struct {
		Payload json.RawMessage `json:"payload"`
		Fields  struct {
			Value string `json:"value"`
		} `json:"fields"`
	}
	if json.Unmarshal(v, &env) != nil {
		return "", 0, time.Time{}, false
	}
	inner := []byte(env.Payload)
	if env.Fields.Value != "" {
		inner = []byte(env.Fields.Value)
	}
	if json.Unmarshal(inner, &p) != nil || p.Run != runID || p.Device == "" {
		return "", 0, time.Time{}, false
	}
	return p.Device, p.Seq, p.TS, true
}

func waitListen(addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after 20s", addr)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func logFile(dir, name string) *os.File {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	return f
}
