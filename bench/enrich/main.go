// Command enrich measures what enrichment costs the egress pipeline: the
// same records through the same pipeline with enrichment off and on (Redis
// backend, warm cache), interleaved in one run, and the Redis round trips a
// batch of 1000 records costs with a cold cache.
//
//	go run ./bench/enrich [-redis 127.0.0.1:16379] [-records 200000]
//
// The sink discards messages after building them, so the ratio is the
// worst case: with a real Kafka the pipeline's other costs dilute it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
)

func main() {
	redisAddr := flag.String("redis", envOr("IOTGW_TEST_REDIS", "127.0.0.1:16379"), "Redis address")
	n := flag.Int("records", 200000, "records per pass")
	kafkaAddr := flag.String("kafka", envOr("IOTGW_TEST_KAFKA", "127.0.0.1:19092"), "Kafka for the end-to-end pass (empty: skip it)")
	devicesN := flag.Int("devices", 2000, "distinct devices")
	rounds := flag.Int("rounds", 3, "interleaved off/on rounds")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(*redisAddr, *kafkaAddr, *n, *devicesN, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench/enrich:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(redisAddr, kafkaAddr string, n, devicesN, rounds int) error {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench%d:", time.Now().UnixNano()%1e6)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	pipe := rdb.Pipeline()
	for d := 0; d < devicesN; d++ {
		pipe.HSet(ctx, fmt.Sprintf("%sdevice:truck-%05d", prefix, d), "fleet", fmt.Sprintf("fleet-%d", d%7), "route", fmt.Sprintf("r%d", d%50), "model", "Actros 1845", "driver", "Anna Schulz")
	}
	for r := 0; r < 50; r++ {
		pipe.HSet(ctx, fmt.Sprintf("%sroute:r%d", prefix, r), "name", fmt.Sprintf("Route %d", r), "km", "118")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("load reference data into %s: %w", redisAddr, err)
	}
	defer func() {
		keys, _ := rdb.Keys(ctx, prefix+"*").Result()
		for i := 0; i < len(keys); i += 1000 {
			rdb.Del(ctx, keys[i:min(i+1000, len(keys))]...)
		}
	}()

	opts := enrich.DefaultOptions()
	opts.Backend = enrich.BackendRedis
	opts.Redis.Addr = redisAddr
	opts.Key = prefix + "device:{device}"
	opts.Lookups = []enrich.Lookup{{Field: "route", Key: prefix + "route:{route}", As: "route"}}
	opts.Invalidate.Keyspace = false
	opts.Timeout = time.Second
	opts.SetDefaults()

	// Cold cache: a fresh enricher, 1000 records of 1000 distinct devices.
	cold, err := enrich.New(ctx, opts, nil)
	if err != nil {
		return err
	}
	batch := make([]*gateway.Record, 1000)
	for i := range batch {
		batch[i] = &gateway.Record{Device: fmt.Sprintf("truck-%05d", i%devicesN)}
	}
	before := cold.Stats().RoundTrips
	if err := cold.Enrich(ctx, batch); err != nil {
		return err
	}
	coldTrips := cold.Stats().RoundTrips - before
	if batch[0].Ref == nil {
		return fmt.Errorf("cold enrichment found nothing: is Redis at %s the one loaded?", redisAddr)
	}
	cold.Close()

	warm, err := enrich.New(ctx, opts, nil)
	if err != nil {
		return err
	}
	defer warm.Close()
	entries := makeEntries(n, devicesN)
	discard := func() (gateway.Sink, error) { return &discardSink{}, nil }
	// Warm the cache.
	if _, err := pass(entries, warm, discard, nil); err != nil {
		return err
	}
	offOn := func(entries []gateway.Entry, sink func() (gateway.Sink, error), routes []gateway.Route) (float64, float64, error) {
		var off, on []float64
		for r := 0; r < rounds; r++ {
			d, err := pass(entries, nil, sink, routes)
			if err != nil {
				return 0, 0, err
			}
			off = append(off, float64(len(entries))/d.Seconds())
			d, err = pass(entries, warm, sink, routes)
			if err != nil {
				return 0, 0, err
			}
			on = append(on, float64(len(entries))/d.Seconds())
		}
		return median(off), median(on), nil
	}
	mOff, mOn, err := offOn(entries, discard, nil)
	if err != nil {
		return err
	}
	var kOff, kOn float64
	if kafkaAddr != "" {
		topic := fmt.Sprintf("bench.enrich.%d", time.Now().UnixNano()%1e6)
		kafkaSink := func() (gateway.Sink, error) {
			return gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{kafkaAddr}}, 2000, nil)
		}
		kOff, kOn, err = offOn(entries, kafkaSink, []gateway.Route{{Match: "devices/#", Topic: topic}})
		deleteTopic(kafkaAddr, topic)
		if err != nil {
			return fmt.Errorf("with Kafka at %s: %w", kafkaAddr, err)
		}
	}
	fmt.Printf("## Enrichment cost in the egress pipeline\n\n")
	fmt.Printf("`go run ./bench/enrich -records %d -devices %d -rounds %d` (Redis %s; sink discards after building the Kafka messages)\n\n", n, devicesN, rounds, redisAddr)
	fmt.Printf("| measure | value | target |\n|---|---|---|\n")
	fmt.Printf("| pipeline, enrichment off (median of %d) | %.0f records/s | |\n", rounds, mOff)
	fmt.Printf("| pipeline, enrichment on, warm cache (median of %d) | %.0f records/s | |\n", rounds, mOn)
	fmt.Printf("| on ÷ off, CPU only (discarding sink: the worst case) | %.2f | |\n", mOn/mOff)
	if kafkaAddr != "" {
		fmt.Printf("| pipeline to Kafka (%s, acks all), enrichment off | %.0f records/s | |\n", kafkaAddr, kOff)
		fmt.Printf("| pipeline to Kafka, enrichment on, warm cache | %.0f records/s | |\n", kOn)
		fmt.Printf("| **on ÷ off, to Kafka** | **%.2f** | ≥ 0.9 |\n", kOn/kOff)
	}
	fmt.Printf("| Redis round trips for 1000 records, cold cache | %d | ≤ 5 |\n", coldTrips)
	if kafkaAddr != "" {
		fmt.Printf("\nRESULT enrich_on_off_ratio %.3f 0.9\n", kOn/kOff)
	}
	fmt.Printf("RESULT enrich_on_off_ratio_cpu_only %.3f 0\nRESULT enrich_cold_round_trips %d 5\n", mOn/mOff, coldTrips)
	return nil
}

func makeEntries(n, devicesN int) []gateway.Entry {
	out := make([]gateway.Entry, n)
	now := time.Now()
	for i := range out {
		d := fmt.Sprintf("truck-%05d", i%devicesN)
		rec := &gateway.Record{ID: gateway.NewID(now), Device: d, Stream: "position", Protocol: gateway.ProtocolMQTT,
			Topic: "devices/" + d + "/position", ReceivedAt: now, QoS: 1,
			Payload: []byte(fmt.Sprintf(`{"device":%q,"seq":%d,"lat":53.55,"lon":9.99,"speed_kmh":72.5,"heading":181.0}`, d, i))}
		out[i] = gateway.Entry{Offset: gateway.Offset(i + 1), Data: gateway.EncodeRecord(nil, rec)}
	}
	return out
}

// pass runs every entry through a pipeline and returns the wall time.
func pass(entries []gateway.Entry, enr gateway.Enricher, newSink func() (gateway.Sink, error), routes []gateway.Route) (time.Duration, error) {
	buf := &sliceBuffer{entries: entries, done: make(chan struct{})}
	router, err := gateway.NewRouter(routes)
	if err != nil {
		return 0, err
	}
	sink, err := newSink()
	if err != nil {
		return 0, err
	}
	defer sink.Close()
	p := gateway.NewPipeline(gateway.EgressOptions{BatchRecords: 2000}, buf, enr, router, sink, 900<<10, "bench", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	select {
	case <-buf.done:
	case err := <-errc:
		return 0, err
	}
	d := time.Since(start)
	cancel()
	<-errc
	if ds, ok := sink.(*discardSink); ok && ds.n != len(entries) {
		return 0, fmt.Errorf("sink got %d of %d", ds.n, len(entries))
	}
	return d, nil
}

// sliceBuffer serves fixed entries and signals when all are committed.
type sliceBuffer struct {
	mu      sync.Mutex
	entries []gateway.Entry
	next    int
	done    chan struct{}
	closed  bool
}

func (b *sliceBuffer) Append([]byte, func(error)) error { return nil }

func (b *sliceBuffer) Read(ctx context.Context, max, _ int) ([]gateway.Entry, error) {
	b.mu.Lock()
	if b.next < len(b.entries) {
		end := min(b.next+max, len(b.entries))
		out := b.entries[b.next:end]
		b.next = end
		b.mu.Unlock()
		return out, nil
	}
	b.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

func (b *sliceBuffer) Commit(off gateway.Offset) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if int(off) == len(b.entries) && !b.closed {
		b.closed = true
		close(b.done)
	}
	return nil
}

func (b *sliceBuffer) Close() error { return nil }

type discardSink struct{ n int }

func (s *discardSink) EnsureTopic(context.Context, gateway.TopicSpec) error { return nil }
func (s *discardSink) Write(_ context.Context, msgs []gateway.Message) error {
	s.n += len(msgs)
	return nil
}
func (s *discardSink) Close() error { return nil }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// deleteTopic deletes the run's topic (every round writes the records
// again: hundreds of megabytes a run on a developer's broker), and says on
// stderr when it cannot.
func deleteTopic(broker, topic string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 30 * time.Second}
	res, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/enrich: topic %s not deleted: %v\n", topic, err)
	}
}
