// Command egress measures iotgw's path from device to Kafka against a plain
// kafka-go producer, side by side in one run, on the same broker, with the
// same record size, and prints a markdown table.
//
//		go run ./bench/egress [-brokers 127.0.0.1:19092] [-trucks 50] [-messages 4000] [-rounds 3]
//		go run ./bench/egress -latency-only 30000   # one latency run, with a timeline by received_at (250 ms steps)
//
//	 1. Gateway: an in-process gateway (buffer fsync "always", acks=all,
//	    default egress settings) fed by the simulator (MQTT 5, QoS 1, 100 in
//	    flight per truck, as fast as acks come back) running in a child
//	    process, as devices are not in the gateway's process
//	    (-sim-in-process runs it in this one); the rate is the messages
//	    Kafka holds divided by the time from the first publish until Kafka
//	    holds the last one. The CPU time the simulator, this process and the
//	    broker (from /proc) used per record is reported for it and for the
//	    plain producers.
//	 2. Plain producer: kafka-go Writers (acks=all, murmur2, batches as large
//	    as the gateway's) writing records of the gateway's average value size
//	    and header set, keyed by the same devices, from 1 and from 4 goroutines;
//	    the better of the two is the reference. A third plain run writes the
//	    same records, from 1 goroutine, to three topics in the proportions
//	    the gateway routed them (by stream): that ratio is the gateway's own
//	    share of the gap, reported beside the target's. Runs 1 and 2
//	    alternate for -rounds rounds; each round gives a ratio, and the
//	    median is reported.
//	 3. Latency: the simulator at half the gateway's measured rate; each
//	    record's payload "ts" (set by the device when it generated the
//	    message) against the Kafka append time (a topic with
//	    message.timestamp.type=LogAppendTime), p50 and p99. The devices'
//	    process runs at nice 19, so that on a machine this small it does
//	    not take the CPU from the gateway and the broker (see simProcess),
//	    and the records of the first 2 s (devices connecting, the process
//	    starting) are reported apart from the measured part.
//
// Where the broker keeps its log matters on a machine this small: on the
// disk the gateway's buffer fsyncs to, the broker's segment flushes and
// writeback stall those fsyncs, which a broker on other hosts does not.
// The report says where it was; `make bench` puts it on a tmpfs.
//
// The broker defaults to the test harness's (IOTGW_TEST_KAFKA or
// 127.0.0.1:19092); every run writes to fresh topics named bench-egress-*.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/gateway/app"
	"github.com/iotgw/iotgw/simulator"
)

func main() {
	app.TuneGC() // as the iotgw binary does
	if childMain(os.Args[1:]) {
		return
	}
	def := os.Getenv("IOTGW_TEST_KAFKA")
	if def == "" {
		def = "127.0.0.1:19092"
	}
	o := options{}
	flag.StringVar(&o.brokers, "brokers", def, "Kafka bootstrap address")
	flag.IntVar(&o.trucks, "trucks", 50, "simulated trucks (MQTT connections) for the throughput run")
	flag.IntVar(&o.messages, "messages", 4000, "messages per truck in each throughput run")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the throughput comparison (end to end, then the plain producers), after one uncounted warm-up round; medians are reported")
	flag.DurationVar(&o.latencyFor, "latency-duration", 20*time.Second, "how long a latency run is measured, after its warm-up")
	flag.DurationVar(&o.latencyWarmup, "latency-warmup", 2*time.Second, "how long the devices send before a latency run's measured part starts (reported apart)")
	flag.IntVar(&o.throughputNice, "throughput-sim-nice", 0, "the nice value of the simulated devices' process in the throughput runs, for exploring (0: the gateway's)")
	flag.IntVar(&o.simNice, "latency-sim-nice", 19, "the nice value of the simulated devices' process in the latency runs (0: the gateway's)")
	flag.StringVar(&o.dir, "dir", "", "buffer directory (default: a temporary directory under the working directory, so fsync hits the real disk)")
	flag.BoolVar(&o.verbose, "v", false, "log the gateway at info level to stderr")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the egress drain run to this file")
	flag.StringVar(&o.latProfile, "latency-cpuprofile", "", "write a CPU profile of the first latency run (or of the -latency-only run) to this file, while the devices send")
	flag.Float64Var(&o.latencyOnly, "latency-only", 0, "only one latency run at this rate (msg/s), for exploring")
	flag.StringVar(&o.e2eMemProfile, "e2e-memprofile", "", "write allocation profiles before (FILE.base) and after the end-to-end throughput run, for go tool pprof -sample_index=alloc_space -diff_base FILE.base FILE")
	flag.StringVar(&o.e2eProfile, "e2e-cpuprofile", "", "write a CPU profile of the end-to-end throughput run (simulator and gateway share the process) to this file")
	flag.DurationVar(&linger, "linger", gateway.DefaultLinger, "the gateway's egress.linger, for exploring")
	flag.IntVar(&batchRecords, "batch-records", 0, "the gateway's egress.batch_records and the plain producers' batch, for exploring (0: the gateway's default)")
	flag.BoolVar(&o.simInProcess, "sim-in-process", false, "run the simulated devices in this process, with the gateway, instead of in a child process")
	flag.Parse()
	switch {
	case o.simNice < 0 || o.simNice > 19:
		fmt.Fprintf(os.Stderr, "bench/egress: -latency-sim-nice %d is outside 0..19\n", o.simNice)
		os.Exit(2)
	case o.latencyWarmup < 0:
		fmt.Fprintln(os.Stderr, "bench/egress: -latency-warmup must not be negative")
		os.Exit(2)
	}
	if err := run(context.Background(), o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/egress:", err)
		os.Exit(1)
	}
}

type options struct {
	brokers        string
	trucks         int
	messages       int
	latencyFor     time.Duration
	latencyWarmup  time.Duration
	simNice        int
	throughputNice int
	dir            string
	verbose        bool
	cpuProfile     string
	latProfile     string
	e2eProfile     string
	latencyOnly    float64
	rounds         int
	e2eMemProfile  string
	simInProcess   bool
}

// latencyRow is one latency run.
type latencyRow struct {
	label         string
	rate          float64 // acked per second
	records       int
	p50, p99, max time.Duration
	egP50, egP99  time.Duration // received_at (accepted, before the fsync) to Kafka append
	// The warm-up's records (see latency): how many, their p99 and max.
	warmRecords      int
	warmP99, warmMax time.Duration
	// From the gateway's /metrics over the run (bucket upper bounds):
	writes                   float64       // Kafka writes
	perWrite                 float64       // messages per write, mean
	writeP50, writeP99       float64       // seconds
	deliveryP50, deliveryP99 float64       // received → Kafka acked, seconds
	fsyncP50, fsyncP99       float64       // the buffer's fsyncs, seconds
	ackP50, ackP99           time.Duration // the devices' PUBACK latency (simulator)
	dirtyMiB                 float64       // the page cache's dirty data written out before the run (settleDisk)
	// CPU over the run, warm-up included, in cores (CPU seconds per
	// second): this process (the gateway), the devices' process, the
	// broker, and what the machine left idle (/proc/stat).
	gwCores, simCores, brokerCores, idleCores float64
}

// round is one alternation of the end-to-end run and the plain producers.
type round struct {
	gw, ingest, plain1, plain4 float64
	plainSame                  float64 // see result.plainSame; not among the best
	// CPU per record, µs: the end-to-end run's simulated devices, gateway
	// (this process) and broker; the best plain producer's own and broker.
	simCPU, gwCPU, gwBrokerCPU, plainCPU, plainBrokerCPU float64
	sameCPU, sameBrokerCPU                               float64
}

func (r round) ratio() float64 { return r.gw / max(r.plain1, r.plain4) }

// sameRatio is the end-to-end rate over a plain producer that writes the
// same records to the same topics.
func (r round) sameRatio() float64 { return r.gw / r.plainSame }

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type result struct {
	kafkaLog       string // where the broker keeps its log (kafkaStorage)
	gwRate         float64
	ingestRate     float64 // devices' acked rate during the end-to-end run
	gwRecords      int64
	gwElapsed      time.Duration
	plain1, plain4 float64
	// plainSame: a plain kafka-go producer writing the gateway's records
	// to the gateway's topics, in the gateway's proportions (topicShare).
	plainSame      float64
	topicShare     []int64 // records per topic of the first end-to-end run, topicsOf order
	drainRate      float64 // egress alone: a filled buffer to Kafka
	plainRecords   int
	valueBytes     int
	headers        int
	lat            []latencyRow
	rounds         []round
	plainLat       latencyRow // a plain producer at 1000 msg/s: the broker's share
	plainPaced     latencyRow // a plain producer shaped like the egress, at half the maximum
	ackP50, ackP99 time.Duration
	// The last round's CPU per record, µs (see round).
	simCPU, gwCPU, gwBrokerCPU, plainCPU, plainBrokerCPU float64
	drainCPU, drainBrokerCPU                             float64 // egress alone
	sameCPU, sameBrokerCPU                               float64 // the plain producer to the gateway's topics
}

func run(ctx context.Context, o options, out io.Writer) error {
	dir := o.dir
	if dir == "" {
		tmp, err := os.MkdirTemp(".", ".bench-egress-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	prefix := fmt.Sprintf("bench-egress-%d", time.Now().Unix())
	// A run writes gigabytes; on a developer's long-running broker the
	// topics of a few dozen runs filled the disk.
	defer deleteTopics(o.brokers, prefix+".")
	logger := slog.New(slog.DiscardHandler)
	if o.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}

	gw, stop, err := startGateway(ctx, o.brokers, filepath.Join(dir, "buffer"), prefix, logger)
	if err != nil {
		return err
	}
	defer stop()

	res := result{kafkaLog: kafkaStorage(ctx, o.brokers)}
	if o.latencyOnly > 0 {
		// Exploring: one latency run at the given rate, its rows only
		// (the timeline goes to stderr, as for every run), after a few
		// messages that create the topics.
		if _, _, err := simulate(ctx, simProcess{inProcess: o.simInProcess}, simulator.Options{Broker: gw.MQTTAddr(), Trucks: o.trucks, Messages: 20, InFlight: 100, Seed: 1, RunID: "warmup"}); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)
		row, err := latency(ctx, o, gw, prefix, o.latencyOnly, "latency-only", o.latProfile)
		if err != nil {
			return err
		}
		row.label = fmt.Sprintf("%.0f msg/s", o.latencyOnly)
		res.lat = []latencyRow{row}
		// The floor at that rate: records of the gateway's usual size
		// (the throughput run measures it; 369 value bytes and 8
		// headers on the simulator's payloads).
		if res.plainPaced, err = plainPacedLatency(ctx, o, prefix, o.latencyOnly, 369, 8); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\n\n", res.kafkaLog)
		reportLatency(out, res)
		return nil
	}
	// Rounds alternate the gateway and the plain producers, so that a noisy
	// neighbour slows both sides of a round's ratio; the medians are
	// reported.
	var gwRates, p1, p4 []float64
	// Round 0 warms up and is not counted: the broker's JIT compiles its
	// produce path during the first seconds of load (its CPU per record
	// was twice the later rounds'), and that would land on the end-to-end
	// run, which comes first.
	for i := range o.rounds + 1 {
		label := fmt.Sprintf("round %d", i)
		if i == 0 {
			label = "round 0 (warm-up, not counted)"
		}
		fmt.Fprintf(os.Stderr, "%s: gateway run: %d trucks x %d messages, QoS 1...\n", label, o.trucks, o.messages)
		if err := gatewayThroughput(ctx, o, gw, prefix, &res, i); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "%s: plain producer runs: %d records of %d value bytes...\n", label, res.gwRecords, res.valueBytes)
		if err := plainThroughput(ctx, o, prefix, &res); err != nil {
			return err
		}
		if i == 0 {
			continue
		}
		gwRates, p1, p4 = append(gwRates, res.gwRate), append(p1, res.plain1), append(p4, res.plain4)
		res.rounds = append(res.rounds, round{gw: res.gwRate, ingest: res.ingestRate, plain1: res.plain1, plain4: res.plain4, plainSame: res.plainSame,
			simCPU: res.simCPU, gwCPU: res.gwCPU, gwBrokerCPU: res.gwBrokerCPU, plainCPU: res.plainCPU, plainBrokerCPU: res.plainBrokerCPU,
			sameCPU: res.sameCPU, sameBrokerCPU: res.sameBrokerCPU})
	}
	res.gwRate, res.plain1, res.plain4 = median(gwRates), median(p1), median(p4)
	fmt.Fprintf(os.Stderr, "egress drain run: %d records from a filled buffer...\n", res.gwRecords)
	if err := egressDrain(ctx, o, filepath.Join(dir, "drain"), prefix, &res); err != nil {
		return err
	}
	for i, l := range []struct {
		label string
		rate  float64
	}{{"half the maximum (%.0f msg/s)", res.gwRate / 2}, {"%.0f msg/s", 5000}, {"%.0f msg/s", 1000}} {
		fmt.Fprintf(os.Stderr, "latency run at %.0f msg/s for %s...\n", l.rate, o.latencyFor)
		profile := ""
		if i == 0 {
			profile = o.latProfile
		}
		row, err := latency(ctx, o, gw, prefix, l.rate, fmt.Sprintf("latency%d", i), profile)
		if err != nil {
			return err
		}
		row.label = fmt.Sprintf(l.label, l.rate)
		res.lat = append(res.lat, row)
	}
	fmt.Fprintf(os.Stderr, "plain producer latency run at 1000 msg/s for %s...\n", o.latencyFor)
	if res.plainLat, err = plainLatency(ctx, o, prefix, 1000); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "plain producer latency run at %.0f msg/s for %s...\n", res.gwRate/2, o.latencyFor)
	if res.plainPaced, err = plainPacedLatency(ctx, o, prefix, res.gwRate/2, res.valueBytes, res.headers); err != nil {
		return err
	}
	report(out, o, res)
	return nil
}

// startGateway runs a gateway in this process: open auth, MQTT on a free
// port, HTTP on a free port (the latency runs read its /metrics), topics {prefix}.{stream} with LogAppendTime timestamps.
func startGateway(ctx context.Context, brokers, bufDir, prefix string, logger *slog.Logger) (*app.Gateway, func(), error) {
	cfgText := fmt.Sprintf(`
gateway:
  id: bench
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
http:
  listen: 127.0.0.1:0
mqtt:
  tcp: 127.0.0.1:0
coap:
  udp: "off"
egress:
  batch_records: %d
  linger: %s
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
    config:
      message.timestamp.type: LogAppendTime
`, brokers, bufDir, plainBatch(), linger, prefix)
	cfg, err := app.Load(strings.NewReader(cfgText), "bench", nil)
	if err != nil {
		return nil, nil, err
	}
	gw := app.New(cfg, logger)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- gw.Run(rctx) }()
	select {
	case <-gw.Ready():
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("gateway: %w", err)
	case <-time.After(30 * time.Second):
		cancel()
		return nil, nil, errors.New("gateway not ready after 30s")
	}
	return gw, func() { cancel(); <-done }, nil
}

// deleteTopics deletes the topics whose names start with prefix, and says
// on stderr what it could not delete.
func deleteTopics(broker, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 30 * time.Second}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/egress: topics %s* not deleted: %v\n", prefix, err)
		return
	}
	var names []string
	for _, t := range meta.Topics {
		if strings.HasPrefix(t.Name, prefix) {
			names = append(names, t.Name)
		}
	}
	if len(names) == 0 {
		return
	}
	res, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: names})
	if err == nil {
		for name, e := range res.Errors {
			if e != nil {
				err = fmt.Errorf("%s: %w", name, e)
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/egress: topics %s* not all deleted: %v\n", prefix, err)
	}
}

func topicsOf(prefix string) []string {
	return []string{prefix + "." + simulator.StreamPosition, prefix + "." + simulator.StreamEngine, prefix + "." + simulator.StreamEvents}
}

// endOffsets sums the high watermarks of topics (missing topics count 0).
func endOffsets(ctx context.Context, client *kafka.Client, topics []string) (int64, error) {
	per, err := topicEnds(ctx, client, topics)
	var n int64
	for _, v := range per {
		n += v
	}
	return n, err
}

// topicEnds returns the summed high watermarks of each topic's partitions,
// in topics' order (missing topics count 0).
func topicEnds(ctx context.Context, client *kafka.Client, topics []string) ([]int64, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return nil, err
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
	n := make([]int64, len(topics))
	if len(req.Topics) == 0 {
		return n, nil
	}
	resp, err := client.ListOffsets(ctx, req)
	if err != nil {
		return nil, err
	}
	for name, ps := range resp.Topics {
		i := slices.Index(topics, name)
		for _, p := range ps {
			if p.Error != nil {
				return nil, p.Error
			}
			if i >= 0 {
				n[i] += p.LastOffset
			}
		}
	}
	return n, nil
}

// waitKafka polls until topics hold want records; it returns when they do.
func waitKafka(ctx context.Context, client *kafka.Client, topics []string, want int64, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := endOffsets(ctx, client, topics)
		if err == nil && n >= want {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("kafka holds %d of %d records after %s (%v)", n, want, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gatewayThroughput(ctx context.Context, o options, gw *app.Gateway, prefix string, res *result, round int) error {
	client := &kafka.Client{Addr: kafka.TCP(o.brokers), Timeout: 10 * time.Second}
	topics := topicsOf(prefix)
	// Create the topics up front: a topic created mid-run stalls egress
	// while the producer's metadata catches up (a one-time cost that is not
	// what this measures).
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: gateway.DefaultPartitions, ReplicationFactor: -1,
			ConfigEntries: []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}})
	}
	if round == 0 {
		if _, err := client.CreateTopics(ctx, req); err != nil {
			return fmt.Errorf("create topics: %w", err)
		}
		// Warm up connections and metadata outside the measurement.
		if _, _, err := simulate(ctx, simProcess{inProcess: o.simInProcess}, simulator.Options{Broker: gw.MQTTAddr(), Trucks: 3, Messages: 20, Rate: 0, Seed: 1, RunID: "warmup", FirstDevice: 9000}); err != nil {
			return err
		}
		if _, err := waitKafka(ctx, client, topics, 60, time.Minute); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	baseTopics, err := topicEnds(ctx, client, topics)
	if err != nil {
		return err
	}
	var base int64
	for _, v := range baseTopics {
		base += v
	}
	profile := round == 1 // the first counted round
	if o.e2eProfile != "" && profile {
		f, err := os.Create(o.e2eProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	if o.e2eMemProfile != "" && profile {
		if err := writeAllocs(o.e2eMemProfile + ".base"); err != nil {
			return err
		}
	}
	before, err := scrape(gw.HTTPAddr())
	if err != nil {
		return err
	}
	cpu0 := sampleCPU()
	start := time.Now()
	rep, simCPU, err := simulate(ctx, simProcess{inProcess: o.simInProcess, nice: o.throughputNice}, simulator.Options{Broker: gw.MQTTAddr(), Trucks: o.trucks, Messages: o.messages, Rate: 0, Seed: 2, RunID: fmt.Sprintf("throughput-%d", round)})
	if o.e2eProfile != "" && profile {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	if rep.Acked != int64(o.trucks*o.messages) {
		return fmt.Errorf("simulator: %d of %d messages acked (%d refused, %d errors)", rep.Acked, o.trucks*o.messages, rep.Refused, rep.Errors)
	}
	end, err := waitKafka(ctx, client, topics, base+rep.Acked, 5*time.Minute)
	if err != nil {
		return err
	}
	cpu := sampleCPU().minus(cpu0)
	res.simCPU, res.gwCPU, res.gwBrokerCPU = perRecord(simCPU, rep.Acked), perRecord(cpu.self, rep.Acked), perRecord(cpu.broker, rep.Acked)
	if o.e2eMemProfile != "" && profile {
		if err := writeAllocs(o.e2eMemProfile); err != nil {
			return err
		}
	}
	if st, err := json.Marshal(gw.Status().Egress); err == nil {
		fmt.Fprintf(os.Stderr, "  egress: %s\n", st)
	}
	if after, err := scrape(gw.HTTPAddr()); err == nil {
		d := after.minus(before)
		writes := d.hist(`iotgw_kafka_write_seconds_bucket{outcome="ok",`).count()
		fmt.Fprintf(os.Stderr, "  Kafka writes: %.0f, %.0f messages per write\n", writes, d[`iotgw_kafka_write_messages_sum`]/max(writes, 1))
	}
	fmt.Fprintf(os.Stderr, "  simulator: %d acked in %s (%.0f/s); kafka complete %s after the last ack; %.0f records/s end to end\n",
		rep.Acked, rep.Elapsed.Round(time.Millisecond), rep.Throughput, end.Sub(start.Add(rep.Elapsed)).Round(time.Millisecond), float64(rep.Acked)/end.Sub(start).Seconds())
	fmt.Fprintf(os.Stderr, "  CPU per record: simulator %.1f µs, gateway %.1f µs (%.1f in the kernel), broker %.1f µs; gateway heap %.0f bytes allocated per record, %d GCs\n",
		res.simCPU, res.gwCPU, perRecord(cpu.selfSys, rep.Acked), res.gwBrokerCPU, float64(cpu.allocBytes)/float64(rep.Acked), cpu.gcs)
	res.gwRecords = rep.Acked
	res.gwElapsed = end.Sub(start)
	res.gwRate = float64(rep.Acked) / res.gwElapsed.Seconds()
	res.ingestRate = rep.Throughput
	res.ackP50, res.ackP99 = rep.LatencyP50, rep.LatencyP99
	if round > 0 {
		return nil
	}
	ends, err := topicEnds(ctx, client, topics)
	if err != nil {
		return err
	}
	res.topicShare = make([]int64, len(topics))
	for i := range ends {
		res.topicShare[i] = ends[i] - baseTopics[i]
	}

	// The plain producer writes records shaped like the gateway's.
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{o.brokers}, Topic: topics[0], Partition: 0, MaxWait: 200 * time.Millisecond})
	defer r.Close()
	var vsum, n, hs int
	for n < 200 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := r.ReadMessage(rctx)
		cancel()
		if err != nil {
			if n > 0 {
				break
			}
			return fmt.Errorf("read back gateway records: %w", err)
		}
		vsum += len(m.Value)
		hs = len(m.Headers)
		n++
	}
	res.valueBytes = vsum / n
	res.headers = hs
	return nil
}

// batchRecords is -batch-records.
var batchRecords int

// linger is -linger.
var linger time.Duration

// plainBatch is the plain producers' batch: the gateway's egress.batch_records.
func plainBatch() int {
	if batchRecords > 0 {
		return batchRecords
	}
	var o gateway.EgressOptions
	o.SetDefaults()
	return o.BatchRecords
}

func plainThroughput(ctx context.Context, o options, prefix string, res *result) error {
	n := int(res.gwRecords)
	res.plainRecords = n
	msgs := make([]kafka.Message, n)
	value := []byte(strings.Repeat("x", res.valueBytes))
	for i := range msgs {
		dev := fmt.Sprintf("truck-%04d", i%o.trucks+1)
		hs := make([]kafka.Header, res.headers)
		for j := range hs {
			hs[j] = kafka.Header{Key: fmt.Sprintf("iotgw-h%d", j), Value: []byte("01KAYBENCHVALUE0000000000")}
		}
		msgs[i] = kafka.Message{Key: []byte(dev), Value: value, Headers: hs}
	}
	// The same records spread over three topics as the gateway's run
	// spread them (by stream), interleaved in proportion.
	same := slices.Clone(msgs)
	sameTopics := make([]string, len(res.topicShare))
	for i := range sameTopics {
		sameTopics[i] = fmt.Sprintf("%s.plainsame%d", prefix, i)
	}
	spreadTopics(same, sameTopics, res.topicShare)
	admin := &kafka.Client{Addr: kafka.TCP(o.brokers), Timeout: 10 * time.Second}
	best, batch := 0.0, plainBatch()
	for _, v := range []struct {
		goroutines int
		same       bool
	}{{1, false}, {4, false}, {1, true}} {
		g, msgs := v.goroutines, msgs
		topic, topics := fmt.Sprintf("%s.plain%d", prefix, g), []kafka.TopicConfig{{Topic: fmt.Sprintf("%s.plain%d", prefix, g), NumPartitions: gateway.DefaultPartitions, ReplicationFactor: -1}}
		if v.same {
			// Configured like the gateway's topics (startGateway).
			topic, topics, msgs = "", nil, same
			for _, t := range sameTopics {
				topics = append(topics, kafka.TopicConfig{Topic: t, NumPartitions: gateway.DefaultPartitions, ReplicationFactor: -1,
					ConfigEntries: []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}})
			}
		}
		if _, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics}); err != nil {
			return err
		}
		w := &kafka.Writer{Addr: kafka.TCP(o.brokers), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
			BatchSize: batch, BatchBytes: 1 << 20, BatchTimeout: time.Millisecond, MaxAttempts: 3}
		// Warm up connections and metadata (every topic).
		if err := w.WriteMessages(ctx, msgs[:10]...); err != nil {
			w.Close()
			return fmt.Errorf("plain producer: %w", err)
		}
		cpu0 := sampleCPU()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, g)
		per := (n + g - 1) / g
		for k := 0; k < g; k++ {
			part := msgs[min(k*per, n):min((k+1)*per, n)]
			wg.Go(func() {
				for len(part) > 0 {
					b := part[:min(batch, len(part))]
					part = part[len(b):]
					if err := w.WriteMessages(ctx, b...); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		cpu := sampleCPU().minus(cpu0)
		w.Close()
		close(errs)
		if err := <-errs; err != nil {
			return fmt.Errorf("plain producer: %w", err)
		}
		rate := float64(n) / elapsed.Seconds()
		if v.same {
			res.plainSame = rate
			res.sameCPU, res.sameBrokerCPU = perRecord(cpu.self, int64(n)), perRecord(cpu.broker, int64(n))
			continue
		}
		if rate > best {
			best = rate
			res.plainCPU, res.plainBrokerCPU = perRecord(cpu.self, int64(n)), perRecord(cpu.broker, int64(n))
		}
		if g == 1 {
			res.plain1 = rate
		} else {
			res.plain4 = rate
		}
	}
	return nil
}

// shares formats records per topic as "a / b / c".
func shares(n []int64) string {
	s := make([]string, len(n))
	for i, v := range n {
		s[i] = strconv.FormatInt(v, 10)
	}
	return strings.Join(s, " / ")
}

// spreadTopics sets the topics of msgs in proportion to share (records
// per topic), interleaved: each message goes to the topic furthest behind
// its share so far.
func spreadTopics(msgs []kafka.Message, topics []string, share []int64) {
	var total int64
	for _, s := range share {
		total += s
	}
	if total == 0 {
		share, total = []int64{1}, 1
	}
	given := make([]int64, len(share))
	for i := range msgs {
		best, lag := 0, int64(math.MinInt64)
		for j, s := range share {
			// (i+1)·s/total − given[j], scaled by total.
			if l := int64(i+1)*s - given[j]*total; l > lag {
				best, lag = j, l
			}
		}
		given[best]++
		msgs[i].Topic = topics[best]
	}
}

// egressDrain measures egress alone: the gateway's buffer, filled while no
// pipeline runs, drained by its pipeline and Kafka sink (default options).
func egressDrain(ctx context.Context, o options, dir, prefix string, res *result) error {
	log, err := buffer.Open(buffer.Options{Dir: dir, Sync: buffer.SyncInterval}, nil)
	if err != nil {
		return err
	}
	defer log.Close()
	n := int(res.gwRecords)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		dev := fmt.Sprintf("truck-%04d", i%o.trucks+1)
		rec := &gateway.Record{ID: gateway.NewID(time.Now()), Device: dev, Stream: simulator.StreamPosition, Protocol: gateway.ProtocolMQTT,
			Topic: "devices/" + dev + "/position", ReceivedAt: time.Now().UTC(), QoS: 1,
			Payload: fmt.Appendf(nil, `{"device":%q,"seq":%d,"ts":%q,"run":"drain","lat":53.551086,"lon":9.993682,"speed_kmh":81.4,"heading":212.5,"odometer_km":10231.7}`, dev, i, time.Now().UTC().Format(time.RFC3339Nano))}
		wg.Add(1)
		for {
			err := log.Append(gateway.EncodeRecord(nil, rec), func(error) { wg.Done() })
			if err == nil {
				break
			}
			if !errors.Is(err, gateway.ErrFull) {
				return err
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	kopts := gateway.KafkaOptions{Brokers: []string{o.brokers}}
	eopts := gateway.EgressOptions{}
	eopts.SetDefaults()
	sink, err := gateway.NewKafkaSink(kopts, eopts.BatchRecords, nil)
	if err != nil {
		return err
	}
	defer sink.Close()
	router, err := gateway.NewRouter([]gateway.Route{{Match: "devices/{device}/{stream}", Topic: prefix + ".drain"}})
	if err != nil {
		return err
	}
	if err := gateway.CheckTopics(ctx, sink, router, prefix+".dlq", nil); err != nil {
		return err
	}
	p := gateway.NewPipeline(eopts, log, nil, router, sink, sink.MaxBatchBytes(), "bench", nil)
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	cpu0 := sampleCPU()
	start := time.Now()
	go func() { done <- p.Run(pctx) }()
	for log.Stats().Records > 0 {
		select {
		case err := <-done:
			stop()
			return fmt.Errorf("egress stopped: %w", err)
		case <-time.After(time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	cpu := sampleCPU().minus(cpu0)
	stop()
	if err := <-done; err != nil {
		return err
	}
	res.drainRate = float64(n) / elapsed.Seconds()
	res.drainCPU, res.drainBrokerCPU = perRecord(cpu.self, int64(n)), perRecord(cpu.broker, int64(n))
	return nil
}

// startProfile starts a CPU profile to file (nothing when file is empty)
// and returns what stops it.
func startProfile(file string) (stop func(), err error) {
	if file == "" {
		return func() {}, nil
	}
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// latency runs the devices at rate and measures the device-to-Kafka
// latency of their records; profile, when set, is a CPU profile of the
// time the devices send.
func latency(ctx context.Context, o options, gw *app.Gateway, prefix string, rate float64, runID, profile string) (latencyRow, error) {
	row := latencyRow{dirtyMiB: settleDisk()}
	trucks := o.trucks
	perTruck := rate / float64(trucks)
	client := &kafka.Client{Addr: kafka.TCP(o.brokers), Timeout: 10 * time.Second}
	topics := topicsOf(prefix)
	base := map[string]map[int]int64{}
	var baseSum int64
	for _, t := range topics {
		base[t] = map[int]int64{}
		offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{t: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2)}}})
		if err != nil {
			return row, err
		}
		for _, p := range offs.Topics[t] {
			base[t][p.Partition] = p.LastOffset
			baseSum += p.LastOffset
		}
	}
	before, err := scrape(gw.HTTPAddr())
	if err != nil {
		return row, err
	}
	stopProfile, err := startProfile(profile)
	if err != nil {
		return row, err
	}
	measureFrom := time.Now().Add(o.latencyWarmup)
	cpu0, idle0, started := sampleCPU(), machineIdle(), time.Now()
	rep, simCPU, err := simulate(ctx, simProcess{inProcess: o.simInProcess, nice: o.simNice}, simulator.Options{Broker: gw.MQTTAddr(), Trucks: trucks, Rate: perTruck, Duration: o.latencyWarmup + o.latencyFor, Jitter: 0.5, Seed: 3, RunID: runID, InFlight: 100})
	stopProfile()
	if err != nil {
		return row, err
	}
	cpu, took := sampleCPU().minus(cpu0), time.Since(started).Seconds()
	row.gwCores, row.simCores, row.brokerCores = cpu.self.Seconds()/took, simCPU.Seconds()/took, cpu.broker.Seconds()/took
	row.idleCores = (machineIdle() - idle0).Seconds() / took
	if _, err := waitKafka(ctx, client, topics, baseSum+rep.Acked, time.Minute); err != nil {
		return row, err
	}
	after, err := scrape(gw.HTTPAddr())
	if err != nil {
		return row, err
	}
	d := after.minus(before)
	write := d.hist(`iotgw_kafka_write_seconds_bucket{outcome="ok",`)
	row.writes = write.count()
	if row.writes > 0 {
		row.perWrite = d[`iotgw_kafka_write_messages_sum`] / row.writes
	}
	row.writeP50, row.writeP99 = write.quantile(0.5), write.quantile(0.99)
	del := d.hist(`iotgw_egress_delivery_seconds_bucket{`)
	row.deliveryP50, row.deliveryP99 = del.quantile(0.5), del.quantile(0.99)
	fsync := d.hist(`iotgw_buffer_fsync_seconds_bucket{`)
	row.fsyncP50, row.fsyncP99 = fsync.quantile(0.5), fsync.quantile(0.99)
	row.ackP50, row.ackP99 = rep.LatencyP50, rep.LatencyP99
	row.rate = float64(rep.Acked) / rep.Elapsed.Seconds() // warm-up included

	// Records appended to Kafka during the warm-up (the devices
	// connecting, the simulator's process starting) are reported apart.
	var lats, egress, warm []time.Duration
	var all []sample
	for _, t := range topics {
		for p := 0; p < gateway.DefaultPartitions; p++ {
			got, err := readLatencies(ctx, o.brokers, t, p, base[t][p], runID)
			if err != nil {
				return row, err
			}
			all = append(all, got...)
			for _, l := range got {
				if l.at.Before(measureFrom) {
					warm = append(warm, l.total)
					continue
				}
				lats = append(lats, l.total)
				egress = append(egress, l.egress)
			}
		}
	}
	if len(lats) == 0 {
		return row, errors.New("latency run: no records read back after the warm-up")
	}
	printTimeline(os.Stderr, fmt.Sprintf("latency run at %.0f msg/s", rate), all)
	slices.Sort(lats)
	slices.Sort(egress)
	slices.Sort(warm)
	row.records = len(lats)
	row.p50, row.p99, row.max = quantile(lats, 0.50), quantile(lats, 0.99), lats[len(lats)-1]
	row.egP50, row.egP99 = quantile(egress, 0.50), quantile(egress, 0.99)
	if row.warmRecords = len(warm); row.warmRecords > 0 {
		row.warmP99, row.warmMax = quantile(warm, 0.99), warm[len(warm)-1]
	}
	return row, nil
}

// quantile is the f quantile of sorted l (not empty).
func quantile(l []time.Duration, f float64) time.Duration {
	return l[min(len(l)-1, int(math.Ceil(f*float64(len(l))))-1)]
}

// settleDisk writes the page cache's dirty data out (sync) and returns how
// many MiB there were. Each latency run starts with it: the throughput
// runs before leave gigabytes that the kernel writes back 30 s later, and
// an fsync issued meanwhile waits behind that writeback (ext4 commits the
// journal with the other files' ordered data), so without it a latency run
// measures the runs before it. 2.2 GB left dirty by dd doubled the p99 of
// a 45k msg/s run (21.9 → 43.5 ms) and raised its warm-up p99 to 89 ms.
func settleDisk() float64 {
	var dirty float64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Dirty:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				dirty = kb / 1024
			}
		}
	}
	syscall.Sync()
	return dirty
}

// plainLatency writes records of the same shape with a plain kafka-go
// Writer from 20 goroutines (one record per synchronous WriteMessages, so
// each waits for acks=all) at rate, and measures the time from just before
// the write to the record's LogAppendTime: what the broker and client
// alone cost on this machine.
func plainLatency(ctx context.Context, o options, prefix string, rate float64) (latencyRow, error) {
	row := latencyRow{label: fmt.Sprintf("plain kafka-go producer, %.0f msg/s", rate), dirtyMiB: settleDisk()}
	topic := prefix + ".plainlat"
	admin := &kafka.Client{Addr: kafka.TCP(o.brokers), Timeout: 10 * time.Second}
	if _, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: gateway.DefaultPartitions, ReplicationFactor: -1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}}}}); err != nil {
		return row, err
	}
	w := &kafka.Writer{Addr: kafka.TCP(o.brokers), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 100 * time.Microsecond, MaxAttempts: 3}
	defer w.Close()
	const workers = 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	end := time.Now().Add(o.latencyFor)
	for g := 0; g < workers; g++ {
		wg.Go(func() {
			tick := time.NewTicker(time.Duration(float64(time.Second) * workers / rate))
			defer tick.Stop()
			for n := 0; time.Now().Before(end); n++ {
				<-tick.C
				val := fmt.Appendf(nil, `{"payload":{"ts":%q,"run":"plain"}}`, time.Now().UTC().Format(time.RFC3339Nano))
				if err := w.WriteMessages(ctx, kafka.Message{Key: fmt.Appendf(nil, "truck-%04d", g*1000+n%50), Value: val}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return row, err
	}
	var lats []time.Duration
	for p := 0; p < gateway.DefaultPartitions; p++ {
		got, err := readLatencies(ctx, o.brokers, topic, p, 0, "plain")
		if err != nil {
			return row, err
		}
		for _, l := range got {
			lats = append(lats, l.total)
		}
	}
	return row, row.summarize(lats, o.latencyFor, "plain latency run")
}

// summarize sets row's count, rate and quantiles from the latencies lats
// measured over d; what names the run in the error for none.
func (row *latencyRow) summarize(lats []time.Duration, d time.Duration, what string) error {
	if len(lats) == 0 {
		return errors.New(what + ": no records read back")
	}
	slices.Sort(lats)
	row.records = len(lats)
	row.rate = float64(len(lats)) / d.Seconds()
	row.p50, row.p99, row.max = quantile(lats, 0.50), quantile(lats, 0.99), lats[len(lats)-1]
	return nil
}

// sample is one record's latencies: its Kafka append time minus the
// device's ts (total) and minus the gateway's received_at (egress alone).
type sample struct {
	at            time.Time // Kafka append time
	received      time.Time // the gateway's received_at
	total, egress time.Duration
}

// timelineStep is a timeline's resolution, by the gateway's received_at.
const timelineStep = 250 * time.Millisecond

// printTimeline writes what the gateway received in each timelineStep
// and those records' latencies, so that a p99 shows whether it comes from
// a stall or from the whole run.
func printTimeline(w io.Writer, title string, samples []sample) {
	steps := map[int64][]sample{}
	for _, s := range samples {
		k := s.received.UnixMilli() / timelineStep.Milliseconds()
		steps[k] = append(steps[k], s)
	}
	fmt.Fprintf(w, "%s: timeline\nreceived at  received/s | device to Kafka p50, p99, max | received to Kafka p50, p99\n", title)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	for _, k := range slices.Sorted(maps.Keys(steps)) {
		l := steps[k]
		total := make([]time.Duration, len(l))
		eg := make([]time.Duration, len(l))
		for i, s := range l {
			total[i], eg[i] = s.total, s.egress
		}
		slices.Sort(total)
		slices.Sort(eg)
		fmt.Fprintf(w, "%s %8.0f | %6.1f %6.1f %6.1f ms | %6.1f %6.1f ms\n", time.UnixMilli(k*timelineStep.Milliseconds()).Format("15:04:05.000"),
			float64(len(l))/timelineStep.Seconds(), ms(quantile(total, .5)), ms(quantile(total, .99)), ms(total[len(total)-1]), ms(quantile(eg, .5)), ms(quantile(eg, .99)))
	}
}

// plainPacedLatency measures what the broker and kafka-go alone cost at
// the gateway's rate, shaped like the egress: records of the gateway's
// size for o.trucks keys over three topics, generated every millisecond at
// rate, and one goroutine that writes whatever accumulated since its last
// Write, one Write in flight, with the gateway's Writer settings. Latency
// is from generation to LogAppendTime, after the same warm-up as the
// gateway's runs; nothing else runs, so it is the floor the gateway's
// latency at that rate sits on.
func plainPacedLatency(ctx context.Context, o options, prefix string, rate float64, valueBytes, headers int) (latencyRow, error) {
	row := latencyRow{label: fmt.Sprintf("plain kafka-go producer shaped like the egress, %.0f msg/s", rate), dirtyMiB: settleDisk()}
	admin := &kafka.Client{Addr: kafka.TCP(o.brokers), Timeout: 10 * time.Second}
	var topics []string
	for _, t := range []string{"a", "b", "c"} {
		topic := prefix + ".paced-" + t
		topics = append(topics, topic)
		if _, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: gateway.DefaultPartitions, ReplicationFactor: -1,
			ConfigEntries: []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}}}}); err != nil {
			return row, err
		}
	}
	w := &kafka.Writer{Addr: kafka.TCP(o.brokers), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchSize: plainBatch(), BatchBytes: 1 << 20, BatchTimeout: 100 * time.Microsecond, MaxAttempts: 3}
	defer w.Close()
	hs := make([]kafka.Header, headers)
	for j := range hs {
		hs[j] = kafka.Header{Key: fmt.Sprintf("iotgw-h%d", j), Value: []byte("01KAYBENCHVALUE0000000000")}
	}
	const run = "plainpaced"
	var (
		mu      sync.Mutex
		pending []kafka.Message
		wg      sync.WaitGroup
		werr    error
	)
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			mu.Lock()
			b := pending
			pending = nil
			mu.Unlock()
			if len(b) == 0 {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Microsecond):
				}
				continue
			}
			for len(b) > 0 && werr == nil {
				n := min(len(b), plainBatch())
				werr = w.WriteMessages(ctx, b[:n]...)
				b = b[n:]
			}
			if werr != nil {
				return
			}
		}
	})
	measureFrom := time.Now().Add(o.latencyWarmup)
	start := time.Now()
	end := measureFrom.Add(o.latencyFor)
	tick := time.NewTicker(time.Millisecond)
	for sent := 0; time.Now().Before(end); {
		<-tick.C
		var b []kafka.Message
		for due := int(time.Since(start).Seconds() * rate); sent < due; sent++ {
			v := fmt.Appendf(nil, `{"payload":{"ts":%q,"run":%q},"pad":"`, time.Now().UTC().Format(time.RFC3339Nano), run)
			for len(v) < valueBytes-2 {
				v = append(v, 'x')
			}
			v = append(v, `"}`...)
			b = append(b, kafka.Message{Topic: topics[sent%len(topics)], Key: fmt.Appendf(nil, "truck-%04d", sent%o.trucks+1), Value: v, Headers: hs})
		}
		mu.Lock()
		pending = append(pending, b...)
		mu.Unlock()
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	if werr != nil {
		return row, fmt.Errorf("plain paced producer: %w", werr)
	}
	var lats []time.Duration
	for _, t := range topics {
		for p := 0; p < gateway.DefaultPartitions; p++ {
			got, err := readLatencies(ctx, o.brokers, t, p, 0, run)
			if err != nil {
				return row, err
			}
			for _, l := range got {
				if l.at.Before(measureFrom) {
					row.warmRecords++
					continue
				}
				lats = append(lats, l.total)
			}
		}
	}
	return row, row.summarize(lats, o.latencyFor, "plain paced latency run")
}

// readLatencies reads a partition from offset from to its end and returns
// the samples of run's records.
func readLatencies(ctx context.Context, broker, topic string, part int, from int64, run string) ([]sample, error) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: part, MaxWait: 200 * time.Millisecond, MaxBytes: 8 << 20})
	defer r.Close()
	if err := r.SetOffset(from); err != nil {
		return nil, err
	}
	var got []sample
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := r.ReadMessage(rctx)
		cancel()
		if err != nil {
			return got, nil // read to the end
		}
		var env struct {
			ReceivedAt time.Time `json:"received_at"`
			Payload    struct {
				TS  time.Time `json:"ts"`
				Run string    `json:"run"`
			} `json:"payload"`
		}
		if json.Unmarshal(m.Value, &env) != nil || env.Payload.Run != run {
			continue
		}
		got = append(got, sample{at: m.Time, received: env.ReceivedAt, total: m.Time.Sub(env.Payload.TS), egress: m.Time.Sub(env.ReceivedAt)})
	}
}

func report(w io.Writer, o options, r result) {
	plain := max(r.plain1, r.plain4)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
	fmt.Fprintf(w, "## Egress: device to Kafka against a plain kafka-go producer\n\n")
	fmt.Fprintf(w, "`go run ./bench/egress -trucks %d -messages %d -latency-duration %s` against %s (Apache Kafka, one node, acks=all). "+
		"Every path writes %d records of %d value bytes and %d headers (the gateway's envelope and headers for the simulator's payloads), keyed by %d devices, to 3-partition topics. %s\n\n",
		o.trucks, o.messages, o.latencyFor, o.brokers, r.gwRecords, r.valueBytes, r.headers, o.trucks, r.kafkaLog)
	fmt.Fprintf(w, "| path | records/s | ÷ best plain | target |\n|---|---:|---:|---|\n")
	fmt.Fprintf(w, "| plain kafka-go Writer, 1 goroutine, batches of %d (keeps per-key order) | %.0f | | |\n", plainBatch(), r.plain1)
	fmt.Fprintf(w, "| plain kafka-go Writer, 4 goroutines, batches of %d (does not keep per-key order) | %.0f | | |\n", plainBatch(), r.plain4)
	sames := make([]float64, len(r.rounds))
	for i, rd := range r.rounds {
		sames[i] = rd.plainSame
	}
	fmt.Fprintf(w, "| plain kafka-go Writer, 1 goroutine, batches of %d, the same records to three topics as the gateway routed them (%s records) | %.0f | | |\n", plainBatch(), shares(r.topicShare), median(sames))
	fmt.Fprintf(w, "| iotgw egress alone: a filled buffer drained by the pipeline and Kafka sink | %.0f | %.2f | |\n", r.drainRate, r.drainRate/plain)
	ratios := make([]float64, len(r.rounds))
	for i, rd := range r.rounds {
		ratios[i] = rd.ratio()
	}
	ratio := median(ratios)
	fmt.Fprintf(w, "| **iotgw end to end**: simulator MQTT 5 QoS 1 (%d connections × 100 in flight) → buffer fsync → PUBACK; egress → Kafka acks=all; until Kafka holds the last record | %.0f | **%.2f** | ≥ 0.5 |\n", o.trucks, r.gwRate, ratio)
	fmt.Fprintf(w, "\nRates are medians of %d rounds, each the end-to-end run then the three plain producers; the end-to-end ratio is the median of the rounds' ratios:\n\n", len(r.rounds))
	fmt.Fprintf(w, "| round | end to end | devices acked/s (ingest, egress running) | plain, 1 goroutine | plain, 4 goroutines | ratio | ingest ÷ best plain | plain, same topics | end to end ÷ plain, same topics |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ingest, sameRatios := make([]float64, len(r.rounds)), make([]float64, len(r.rounds))
	for i, rd := range r.rounds {
		ingest[i], sameRatios[i] = rd.ingest/max(rd.plain1, rd.plain4), rd.sameRatio()
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.0f | %.2f |\n", i+1, rd.gw, rd.ingest, rd.plain1, rd.plain4, rd.ratio(), ingest[i], rd.plainSame, sameRatios[i])
	}
	fmt.Fprintf(w, "\nThe target compares with the best plain producer, which writes one topic. The gateway routes the simulator's records by stream to three topics, and kafka-go's Writer sends one produce request per partition, so the same records cost a plain producer more when they go where the gateway sends them: end to end ÷ that producer, median %.2f, is the gateway's own share of the gap (not the target's measure).\n", median(sameRatios))
	fmt.Fprintf(w, "\nThe end-to-end rate cannot exceed the rate devices are acked at, and on this machine the simulator, the MQTT side and the fsyncs share two cores with egress and the broker: the ingest column is that ceiling (median %.2f of the best plain producer).\n", median(ingest))
	med := func(f func(round) float64) float64 {
		v := make([]float64, len(r.rounds))
		for i, rd := range r.rounds {
			v[i] = f(rd)
		}
		return median(v)
	}
	sim, gw, gwb := med(func(r round) float64 { return r.simCPU }), med(func(r round) float64 { return r.gwCPU }), med(func(r round) float64 { return r.gwBrokerCPU })
	pl, plb := med(func(r round) float64 { return r.plainCPU }), med(func(r round) float64 { return r.plainBrokerCPU })
	where := "in a child process"
	if o.simInProcess {
		where = "in the gateway's process (-sim-in-process), so counted in its column"
	}
	fmt.Fprintf(w, "\nCPU time per record (user + system, µs; medians of the rounds; the broker's from /proc, the simulated devices ran %s):\n\n", where)
	fmt.Fprintf(w, "| path | simulated devices | gateway / producer process | Kafka broker | total |\n|---|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| end to end | %.1f | %.1f | %.1f | %.1f |\n", sim, gw, gwb, sim+gw+gwb)
	fmt.Fprintf(w, "| best plain producer | | %.1f | %.1f | %.1f |\n", pl, plb, pl+plb)
	sp, spb := med(func(r round) float64 { return r.sameCPU }), med(func(r round) float64 { return r.sameBrokerCPU })
	fmt.Fprintf(w, "| plain producer, the gateway's three topics | | %.1f | %.1f | %.1f |\n", sp, spb, sp+spb)
	fmt.Fprintf(w, "| egress alone (one run) | | %.1f | %.1f | %.1f |\n", r.drainCPU, r.drainBrokerCPU, r.drainCPU+r.drainBrokerCPU)
	fmt.Fprintf(w, "\nDuring the end-to-end run the devices' PUBACK latency (after the fsync) was p50 %s, p99 %s.\n", ms(r.ackP50), ms(r.ackP99))
	fmt.Fprintf(w, "\n### Device to Kafka latency\n\n")
	fmt.Fprintf(w, "From the payload's `ts` (taken by the simulated device when it builds the message) to the record's Kafka LogAppendTime; the two columns after max start at the gateway's `received_at` (accepted, before the fsync), so they leave out the device side. "+
		"Each run lasts %s after a warm-up of %s (the devices connecting, their process starting), whose records are counted apart in the last columns. The devices' process runs at nice %d: on this 2-core machine it would otherwise take the CPU from the gateway and the broker that, in a deployment, devices on other machines do not. Target: p99 ≤ 50 ms at half the maximum rate.\n\n", o.latencyFor, o.latencyWarmup, o.simNice)
	reportLatency(w, r)
	fmt.Fprintf(w, "\nRESULT egress_e2e_rate_ratio %.3f 0.5\n", ratio)
	fmt.Fprintf(w, "RESULT egress_drain_rate_ratio %.3f 0\n", r.drainRate/plain)
	fmt.Fprintf(w, "RESULT egress_ingest_rate_ratio %.3f 0\n", median(ingest))
	fmt.Fprintf(w, "RESULT egress_e2e_same_topics_ratio %.3f 0\n", median(sameRatios))
	fmt.Fprintf(w, "RESULT egress_e2e_cpu_us_per_record %.1f 0\n", sim+gw+gwb)
	fmt.Fprintf(w, "RESULT egress_plain_cpu_us_per_record %.1f 0\n", pl+plb)
	fmt.Fprintf(w, "RESULT egress_plain_producer_latency_p99_ms %.1f 0\n", float64(r.plainLat.p99)/1e6)
	fmt.Fprintf(w, "RESULT egress_plain_paced_latency_p99_ms %.1f 0\n", float64(r.plainPaced.p99)/1e6)
	for i, l := range r.lat {
		target := 0
		if i == 0 {
			target = 50
		}
		fmt.Fprintf(w, "RESULT egress_latency_p99_ms_at_%.0f %.1f %d\n", l.rate, float64(l.p99)/1e6, target)
	}
}

// metrics is a scrape of the gateway's /metrics: sample line (name and
// labels) to value.
type metrics map[string]float64

func scrape(addr string) (metrics, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	m := metrics{}
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

func (m metrics) minus(o metrics) metrics {
	d := metrics{}
	for k, v := range m {
		d[k] = v - o[k]
	}
	return d
}

// histogram is cumulative bucket counts by upper bound, ascending.
type histogram []struct{ le, n float64 }

// hist collects the buckets whose sample line starts with prefix (the
// name, "_bucket{" and any labels before le).
func (m metrics) hist(prefix string) histogram {
	var h histogram
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, ok := strings.CutPrefix(rest, `le="`)
		if !ok {
			continue
		}
		b, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
		if err != nil {
			continue
		}
		h = append(h, struct{ le, n float64 }{b, v})
	}
	slices.SortFunc(h, func(a, b struct{ le, n float64 }) int { return cmp.Compare(a.le, b.le) })
	return h
}

func (h histogram) count() float64 {
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].n
}

// quantile is the upper bound of the bucket holding the q quantile.
func (h histogram) quantile(q float64) float64 {
	total := h.count()
	for _, b := range h {
		if b.n >= q*total && total > 0 {
			return b.le
		}
	}
	return math.Inf(1)
}

// reportLatency prints the latency rows (and the plain producer's, when
// measured) and the gateway's own histograms over each run.
func reportLatency(w io.Writer, r result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
	fmt.Fprintf(w, "| offered rate | acked msg/s | records | p50 | p99 | max | from received_at p50 | p99 | warm-up records | warm-up p99 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, l := range r.lat {
		fmt.Fprintf(w, "| %s | %.0f | %d | %s | %s | %s | %s | %s | %d | %s | %s |\n", l.label, l.rate, l.records, ms(l.p50), ms(l.p99), ms(l.max), ms(l.egP50), ms(l.egP99), l.warmRecords, ms(l.warmP99), ms(l.warmMax))
	}
	if l := r.plainLat; l.records > 0 {
		fmt.Fprintf(w, "| %s (write call to LogAppendTime: the broker's share) | %.0f | %d | %s | %s | %s | | | | | |\n", l.label, l.rate, l.records, ms(l.p50), ms(l.p99), ms(l.max))
	}
	if l := r.plainPaced; l.records > 0 {
		fmt.Fprintf(w, "| %s (generated to LogAppendTime, nothing else running: the floor at that rate) | %.0f | %d | %s | %s | %s | | | %d | | |\n", l.label, l.rate, l.records, ms(l.p50), ms(l.p99), ms(l.max), l.warmRecords)
	}
	var dirty []string
	for _, l := range append(slices.Clone(r.lat), r.plainLat, r.plainPaced) {
		if l.records > 0 {
			dirty = append(dirty, fmt.Sprintf("%.0f", l.dirtyMiB))
		}
	}
	fmt.Fprintf(w, "\nEach run starts after `sync` wrote out the page cache's dirty data, which the runs before it left (MiB, in the order of the rows: %s): an fsync waits behind the kernel's writeback of other files, so the run would otherwise pay for what earlier runs wrote.\n", strings.Join(dirty, ", "))
	fmt.Fprintf(w, "\nWhere the time goes, over each run, warm-up included: the gateway's own histograms (`/metrics`: `iotgw_buffer_fsync_seconds`, `iotgw_kafka_write_seconds`, `iotgw_kafka_write_messages`, `iotgw_egress_delivery_seconds`; quantiles are bucket upper bounds) and the devices' PUBACK latency as the simulator measured it (the fsync is its floor):\n\n")
	fmt.Fprintf(w, "| offered rate | fsync p50 | fsync p99 | PUBACK p50 | PUBACK p99 | Kafka writes | messages per write | write p50 | write p99 | received → Kafka acked p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	sec := func(v float64) string { return fmt.Sprintf("≤ %.1f ms", v*1e3) }
	for _, l := range r.lat {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s |\n", l.label, sec(l.fsyncP50), sec(l.fsyncP99), ms(l.ackP50), ms(l.ackP99), l.writes, l.perWrite, sec(l.writeP50), sec(l.writeP99), sec(l.deliveryP50), sec(l.deliveryP99))
	}
	fmt.Fprintf(w, "\nCPU over each run, warm-up included, in cores of the machine's %d (CPU seconds per second; the devices' process at nice 19 takes what the others leave):\n\n", runtime.NumCPU())
	fmt.Fprintf(w, "| offered rate | gateway | devices | Kafka broker | the rest (interrupts, kernel threads, other processes) | idle |\n|---|---:|---:|---:|---:|---:|\n")
	for _, l := range r.lat {
		rest := max(float64(runtime.NumCPU())-l.gwCores-l.simCores-l.brokerCores-l.idleCores, 0)
		fmt.Fprintf(w, "| %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", l.label, l.gwCores, l.simCores, l.brokerCores, rest, l.idleCores)
	}
	fmt.Fprintln(w)
}

func writeAllocs(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	// The profile is as of the last garbage collection: make it now.
	runtime.GC()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// kafkaStorage says where the broker keeps its log (log.dirs) and on what
// file system, when the broker runs on this machine. On a tmpfs the
// broker's segment flushes and writeback stay off the disk the gateway's
// buffer fsyncs to, as they do when Kafka runs on other hosts
// (scripts/bench.sh: KAFKA_DATA_ROOT).
func kafkaStorage(ctx context.Context, broker string) string {
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil || len(meta.Brokers) == 0 {
		return "Where the broker keeps its log is unknown."
	}
	res, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeBroker, ResourceName: strconv.Itoa(meta.Brokers[0].ID), ConfigNames: []string{"log.dirs"}}}})
	if err != nil || len(res.Resources) == 0 || len(res.Resources[0].ConfigEntries) == 0 {
		return "Where the broker keeps its log is unknown."
	}
	dir := res.Resources[0].ConfigEntries[0].ConfigValue
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return fmt.Sprintf("The broker keeps its log in %s, not on this machine.", dir)
	}
	if st.Type == 0x01021994 { // tmpfs
		return fmt.Sprintf("The broker keeps its log in %s, a tmpfs: in a deployment Kafka runs on other hosts, and on this machine its segment flushes and writeback would otherwise stall the gateway buffer's fsyncs on the shared disk.", dir)
	}
	return fmt.Sprintf("The broker keeps its log in %s, on the disk the gateway's buffer fsyncs to, so the broker's segment flushes and writeback stall those fsyncs (`make bench` puts it on a tmpfs when it starts the broker).", dir)
}
