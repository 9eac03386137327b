// Command coap benchmarks iotgw's CoAP front door against its MQTT one:
// confirmable CoAP POSTs acknowledged per second against MQTT QoS 1
// publishes acknowledged per second, with the same number of devices. Both
// servers run in this process on loopback, each writing to its own
// buffer.Log with the same (default: fsync "always") settings in the same
// directory, and the project's simulator drives them (climate sensors over
// CoAP, trucks over MQTT). Runs are interleaved (MQTT, CoAP, CoAP, MQTT) so
// that a change in the machine's load hits both alike. It prints a markdown
// table.
//
//	go run ./bench/coap [-dir DIR] [-duration 5s] [-devices 10,100,1000] [-mqtt-inflight 100]
//
// DIR defaults to a temporary directory under the working directory: /tmp
// may be a tmpfs, where fsync costs nothing and the numbers mean nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/coap"
	"github.com/iotgw/iotgw/protocols/mqtt"
	"github.com/iotgw/iotgw/simulator"
)

func main() {
	dir := flag.String("dir", "", "directory for the buffers (default: a temporary directory under the working directory)")
	duration := flag.Duration("duration", 5*time.Second, "length of one run; each case runs twice")
	devs := flag.String("devices", "10,100,1000", "device counts, comma-separated")
	inflight := flag.Int("mqtt-inflight", 100, "unacknowledged QoS 1 publishes per MQTT connection (the simulator's load-test default); CoAP devices have one request outstanding (NSTART 1)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	only := flag.String("only", "", "run only this protocol (mqtt or coap), for profiling")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/coap:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench/coap:", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	counts, err := parseCounts(*devs)
	if err == nil {
		err = run(*dir, *duration, counts, *inflight, *only, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/coap:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-devices: %q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// result is one run of one protocol.
type result struct {
	acked      int64
	throughput float64
	p50, p99   time.Duration
	errors     int64
}

func run(dir string, d time.Duration, counts []int, inflight int, only string, out io.Writer) error {
	if dir == "" {
		tmp, err := os.MkdirTemp(".", ".bench-coap-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	fmt.Fprintf(out, "%d CPUs, %s, %s per run, buffer fsync always; each case runs twice, interleaved (MQTT 1, MQTT %d, CoAP, CoAP, MQTT %d, MQTT 1)\n\n",
		runtime.NumCPU(), runtime.Version(), d, inflight, inflight)
	fmt.Fprintf(out, "| devices | MQTT QoS 1, 1 in flight: acked/s (p50 / p99) | MQTT QoS 1, %d in flight: acked/s (p50 / p99) | CoAP CON: acked/s (p50 / p99) | CoAP ÷ MQTT 1 in flight | CoAP ÷ MQTT %d in flight |\n", inflight, inflight)
	fmt.Fprintln(out, "|---:|---:|---:|---:|---:|---:|")
	type kase struct {
		proto    string
		inflight int
	}
	m1, mN, co := kase{"mqtt", 1}, kase{"mqtt", inflight}, kase{"coap", 1}
	n := 0
	for _, devices := range counts {
		res := map[kase][]result{}
		for _, k := range []kase{m1, mN, co, co, mN, m1} {
			if only != "" && k.proto != only {
				res[k] = append(res[k], result{throughput: 1})
				continue
			}
			n++
			r, err := once(fmt.Sprintf("%s/run-%d", dir, n), k.proto, devices, k.inflight, d)
			if err != nil {
				return fmt.Errorf("%s with %d devices: %w", k.proto, devices, err)
			}
			fmt.Fprintf(os.Stderr, "done: %s (%d in flight), %d devices: %.0f acked/s, %d errors\n", k.proto, k.inflight, devices, r.throughput, r.errors)
			res[k] = append(res[k], r)
		}
		a, b, c := mean(res[m1]), mean(res[mN]), mean(res[co])
		fmt.Fprintf(out, "| %d | %.0f (%s / %s) | %.0f (%s / %s) | %.0f (%s / %s) | %.2f | %.2f |\n", devices,
			a.throughput, ms(a.p50), ms(a.p99), b.throughput, ms(b.p50), ms(b.p99), c.throughput, ms(c.p50), ms(c.p99),
			c.throughput/a.throughput, c.throughput/b.throughput)
	}
	fmt.Fprintln(out, "\nCoAP devices have one request outstanding each (RFC 7252 NSTART 1), like MQTT with 1 in flight.")
	return nil
}

// once starts a fresh buffer and server for proto, drives it with the
// simulator for d and returns what the devices saw acknowledged.
func once(dir, proto string, devices, inflight int, d time.Duration) (result, error) {
	buf, err := buffer.Open(buffer.Options{Dir: dir}, nil)
	if err != nil {
		return result{}, err
	}
	defer func() {
		buf.Close()
		os.RemoveAll(dir)
		// Let the disk write back and forget the run's data, so that it
		// does not slow the next run's fsyncs.
		syscall.Sync()
		time.Sleep(time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := simulator.Options{Rate: 0, Duration: d, Seed: 1, DrainTimeout: 2 * time.Second, AckTimeout: 10 * time.Second}
	var src gateway.Source
	switch proto {
	case "mqtt":
		s, err := mqtt.New(mqtt.Options{TCP: "127.0.0.1:0"}, buf, nil, nil, nil, nil)
		if err != nil {
			return result{}, err
		}
		if err := s.Start(ctx); err != nil {
			return result{}, err
		}
		src = s
		opts.Broker, _ = s.Addr()
		opts.Trucks, opts.QoS, opts.InFlight = devices, simulator.QoS(1), inflight
	default:
		s, err := coap.New(coap.Options{UDP: "127.0.0.1:0"}, buf, nil, nil)
		if err != nil {
			return result{}, err
		}
		if err := s.Start(ctx); err != nil {
			return result{}, err
		}
		src = s
		opts.CoAP, _ = s.Addr()
		opts.Sensors, opts.CoAPType = devices, "con"
	}
	defer src.Close(ctx)
	rep, err := simulator.Run(context.Background(), opts)
	if err != nil {
		return result{}, err
	}
	if cs, ok := src.(*coap.Server); ok && verbose {
		fmt.Fprintf(os.Stderr, "coap stats: %+v\n", cs.Stats())
	}
	return result{acked: rep.Acked, throughput: rep.Throughput, p50: rep.LatencyP50, p99: rep.LatencyP99, errors: rep.Errors}, nil
}

var verbose = os.Getenv("BENCH_VERBOSE") != ""

func mean(rs []result) result {
	var m result
	for _, r := range rs {
		m.throughput += r.throughput / float64(len(rs))
		m.p50 += r.p50 / time.Duration(len(rs))
		m.p99 += r.p99 / time.Duration(len(rs))
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
