// Command mqtt benchmarks iotgw's MQTT adapter (package protocols/mqtt)
// side by side, in one run, against a bare mochi-mqtt broker and against the
// disk's plain fsync rate, and prints markdown tables:
//
//   - QoS 1 acked messages per second with 100 clients, each with 100
//     publishes in flight, for the gateway (durable buffer under sync
//     "always", egress draining it through the real pipeline into a
//     discarding sink, or into Kafka with -kafka) and for a bare mochi broker
//     with no hooks but allow-all auth. Target: gateway ÷ mochi ≥ 0.6. The
//     bare broker is built on the mochi the gateway embeds: mochi-mqtt with
//     iotgw's patches (third_party/mochi-mqtt, through go.mod's replace).
//   - the same with one client and 100 in flight, against a plain 4 KiB
//     write + fsync (and fdatasync, which the buffer uses) loop on the disk
//     of the buffer, run right before and after it. Target: ≥ 10 × the
//     faster kind of loop (mean of before and after).
//   - resident memory per idle connection: a child process runs the
//     gateway's MQTT server (or a bare mochi broker with its defaults),
//     dialer children open N connections to it, and the server's VmRSS
//     growth is divided by N. Target for the gateway: ≤ 20 KiB.
//
// The load generator is the project's simulator (simulator.Run, QoS 1,
// MQTT 3.1.1, rate 0, 100 in flight), the same for both brokers, in this
// process. Rounds alternate which broker goes first, and ratios are taken
// within a round, so that a drift in the machine's load hits both sides.
//
//	go run ./bench/mqtt [-dir DIR] [-rounds 5] [-clients 100] [-messages 200000] [-single 100000] [-idle 19900] [-kafka ADDR]
//
// DIR defaults to a temporary directory under the working directory: /tmp
// may be a tmpfs, where fsync costs nothing and the numbers mean nothing.
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/mqtt"
	"github.com/iotgw/iotgw/simulator"
)

type config struct {
	dir      string
	clients  int
	messages int // per throughput run with many clients, in total
	single   int // for the one-client run
	idle     int
	rounds   int
	kafka    string
	fsyncDur time.Duration
	only     string
	noEgress bool
}

func main() {
	var c config
	flag.StringVar(&c.dir, "dir", "", "directory on the disk to measure (default: a temporary directory under the working directory)")
	flag.IntVar(&c.clients, "clients", 100, "clients of the many-clients runs")
	flag.IntVar(&c.messages, "messages", 200000, "QoS 1 messages per many-clients run, in total")
	flag.IntVar(&c.single, "single", 100000, "QoS 1 messages per one-client run")
	flag.IntVar(&c.idle, "idle", 19900, "idle connections for the memory measurement (0 skips it); the broker's process needs one file descriptor each, under the hard limit")
	flag.StringVar(&c.only, "only", "", "run only the throughput runs of this broker (gateway or mochi), for profiling")
	flag.IntVar(&c.rounds, "rounds", 5, "rounds of interleaved throughput runs; medians are reported")
	flag.BoolVar(&c.noEgress, "no-egress", false, "diagnostic: run the gateway without egress (the buffer only fills), to see what delivery costs the ingest side")
	flag.StringVar(&c.kafka, "kafka", "", "deliver the gateway's buffer to this Kafka (e.g. 127.0.0.1:19092) instead of a discarding sink")
	flag.DurationVar(&c.fsyncDur, "fsync-duration", time.Second, "how long each plain fsync loop runs")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	serveIdle := flag.String("serve-idle", "", "internal: run a broker (gateway or mochi) for the idle-connection measurement")
	dialIdleAddr := flag.String("dial-idle", "", "internal: open -idle connections to this broker from -offset on and hold them until stdin closes")
	offset := flag.Int("offset", 0, "internal: see -dial-idle")
	flag.Parse()
	raiseFileLimit()
	if *serveIdle != "" {
		if err := serveIdleBroker(*serveIdle, c.dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench/mqtt child:", err)
			os.Exit(1)
		}
		return
	}
	if *dialIdleAddr != "" {
		conns, err := openIdle(*dialIdleAddr, c.idle, *offset)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/mqtt dialer:", err)
			os.Exit(1)
		}
		fmt.Println(len(conns))
		io.Copy(io.Discard, os.Stdin)
		return
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/mqtt:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench/mqtt:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	if err := run(c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/mqtt:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// raiseFileLimit lifts the soft open-files limit to the hard one: the idle
// measurement holds tens of thousands of sockets on each side.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

func progress(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func run(c config, out io.Writer) error {
	if c.dir == "" {
		tmp, err := os.MkdirTemp(".", ".bench-mqtt-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		c.dir = tmp
	}
	abs, _ := filepath.Abs(c.dir)
	sink := "a discarding sink (through the real egress pipeline)"
	switch {
	case c.noEgress:
		sink = "nothing (-no-egress: the buffer only fills)"
	case c.kafka != "":
		sink = "Kafka at " + c.kafka
	}
	fmt.Fprintf(out, "Directory %s (%s), %d CPUs, %s; buffer sync \"always\", egress into %s.\n\n",
		abs, describeFS(c.dir), runtime.NumCPU(), runtime.Version(), sink)
	fmt.Fprintf(out, "Bare mochi: mochi-mqtt v%s with iotgw's patches (`third_party/mochi-mqtt`, the copy the gateway embeds), default capabilities, no hooks but allow-all authentication.\n\n", mochi.Version)

	// Each round: the many-clients runs of both brokers back to back (in
	// alternating order), then the one-client runs, the gateway's
	// bracketed by the plain loops, so every ratio compares measurements
	// taken moments apart on this shared machine.
	var rounds []roundResult
	var fsyncs, fdatasyncs []loopResult
	for r := range c.rounds {
		var rr roundResult
		order := []string{"mochi", "gateway"}
		if r%2 == 1 {
			order = []string{"gateway", "mochi"}
		}
		for _, clients := range []int{c.clients, 1} {
			for _, b := range order {
				if c.only != "" && b != c.only {
					continue
				}
				total := c.messages
				if clients == 1 {
					total = c.single
				}
				bracket := b == "gateway" && clients == 1
				if bracket {
					if err := rr.plain(c, &fsyncs, &fdatasyncs); err != nil {
						return err
					}
				}
				res, err := throughput(c, b, clients, total, r)
				if err != nil {
					return fmt.Errorf("%s, %d clients: %w", b, clients, err)
				}
				progress("round %d %s %d clients: %.0f acked/s (p50 %s, p99 %s)%s", r+1, b, clients, res.rate, res.p50, res.p99, res.note)
				switch {
				case b == "gateway" && clients == 1:
					rr.one = res
				case b == "gateway":
					rr.many = res
				case clients == 1:
					rr.oneMochi = res
				default:
					rr.manyMochi = res
				}
				if bracket {
					if err := rr.plain(c, &fsyncs, &fdatasyncs); err != nil {
						return err
					}
				}
			}
		}
		rounds = append(rounds, rr)
	}

	var idleGW, idleMochi idleResult
	var err error
	if c.idle > 0 {
		if idleGW, err = measureIdle(c, "gateway"); err != nil {
			return fmt.Errorf("idle connections, gateway: %w", err)
		}
		progress("idle gateway: %.1f KiB per connection", idleGW.perConnKiB)
		if idleMochi, err = measureIdle(c, "mochi"); err != nil {
			return fmt.Errorf("idle connections, mochi: %w", err)
		}
		progress("idle mochi: %.1f KiB per connection", idleMochi.perConnKiB)
	}

	pick := func(f func(roundResult) result) result {
		var rs []result
		for _, r := range rounds {
			rs = append(rs, f(r))
		}
		return median(rs)
	}
	ratio := func(f func(roundResult) float64) float64 {
		var xs []float64
		for _, r := range rounds {
			xs = append(xs, f(r))
		}
		slices.Sort(xs)
		if len(xs) == 0 {
			return 0
		}
		return xs[len(xs)/2]
	}
	mm := pick(func(r roundResult) result { return r.manyMochi })
	mg := pick(func(r roundResult) result { return r.many })
	om := pick(func(r roundResult) result { return r.oneMochi })
	og := pick(func(r roundResult) result { return r.one })
	manyRatio := ratio(func(r roundResult) float64 { return r.many.rate / r.manyMochi.rate })
	oneRatio := ratio(func(r roundResult) float64 { return r.one.rate / r.plainRef })
	fs, fds := medianLoop(fsyncs), medianLoop(fdatasyncs)

	fmt.Fprintf(out, "| measurement | result | p50 / p99 latency | compared with | ratio | target |\n")
	fmt.Fprintf(out, "|---|---|---|---|---|---|\n")
	fmt.Fprintf(out, "| plain 4 KiB write + fsync loop | %s /s | %s / %s | | | |\n", num(fs.rate), fs.p50, fs.p99)
	fmt.Fprintf(out, "| plain 4 KiB write + fdatasync loop | %s /s | %s / %s | | | |\n", num(fds.rate), fds.p50, fds.p99)
	fmt.Fprintf(out, "| bare mochi, %d clients × 100 in flight, QoS 1 | %s acked/s | %s / %s | | | |\n", c.clients, num(mm.rate), mm.p50, mm.p99)
	fmt.Fprintf(out, "| **iotgw**, %d clients × 100 in flight, QoS 1, acked after fsync | %s acked/s | %s / %s | bare mochi, same round | **%.2f** | ≥ 0.6 %s |\n",
		c.clients, num(mg.rate), mg.p50, mg.p99, manyRatio, verdict(manyRatio >= 0.6))
	fmt.Fprintf(out, "| bare mochi, 1 client × 100 in flight, QoS 1 | %s acked/s | %s / %s | | | |\n", num(om.rate), om.p50, om.p99)
	fmt.Fprintf(out, "| **iotgw**, 1 client × 100 in flight, QoS 1, acked after fsync | %s acked/s | %s / %s | plain loops around it (faster kind, mean of before and after) | **%.1f** | ≥ 10 %s |\n",
		num(og.rate), og.p50, og.p99, oneRatio, verdict(oneRatio >= 10))
	if c.idle > 0 {
		fmt.Fprintf(out, "| **iotgw**, %d idle connections (MQTT 3.1.1, keep-alive 300 s) | **%.1f KiB** RSS per connection (stacks %.1f, heap %.1f) | | bare mochi | %.2f | ≤ 20 KiB %s |\n",
			idleGW.conns, idleGW.perConnKiB, idleGW.stackKiB, idleGW.heapKiB, idleGW.perConnKiB/idleMochi.perConnKiB, verdict(idleGW.perConnKiB <= 20))
		fmt.Fprintf(out, "| bare mochi with its default capabilities, %d idle connections | %.1f KiB RSS per connection (stacks %.1f, heap %.1f) | | | | |\n",
			idleMochi.conns, idleMochi.perConnKiB, idleMochi.stackKiB, idleMochi.heapKiB)
	}
	fmt.Fprintf(out, "\nRates and ratios are medians over %d rounds (%d and %d messages per run). Each round:\n\n", c.rounds, c.messages, c.single)
	fmt.Fprintf(out, "| round | mochi, %d clients | iotgw, %d clients | ratio | plain loop around | iotgw, 1 client | ratio | mochi, 1 client | iotgw group commit |\n", c.clients, c.clients)
	fmt.Fprintf(out, "|---|---|---|---|---|---|---|---|---|\n")
	for i, r := range rounds {
		fmt.Fprintf(out, "| %d | %s | %s | %.2f | %s | %s | %.1f | %s | %s |\n", i+1, num(r.manyMochi.rate), num(r.many.rate), r.many.rate/r.manyMochi.rate,
			num(r.plainRef), num(r.one.rate), r.one.rate/r.plainRef, num(r.oneMochi.rate), strings.TrimPrefix(r.many.note+r.one.note, ", "))
	}
	return nil
}

// roundResult is one round of throughput runs.
type roundResult struct {
	many, manyMochi, one, oneMochi result
	fsync, fdatasync               []float64 // plain loop rates right before and after the gateway's one-client run
	plainRef                       float64   // the faster kind's average of those
}

// plain runs both plain loops (once before the gateway's one-client run,
// once after); the reference is the faster kind's average of the two.
func (rr *roundResult) plain(c config, fsyncs, fdatasyncs *[]loopResult) error {
	for _, data := range []bool{false, true} {
		l, err := plainLoop(c.dir, c.fsyncDur, data)
		if err != nil {
			return err
		}
		if data {
			*fdatasyncs = append(*fdatasyncs, l)
			rr.fdatasync = append(rr.fdatasync, l.rate)
		} else {
			*fsyncs = append(*fsyncs, l)
			rr.fsync = append(rr.fsync, l.rate)
		}
		progress("plain loop (fdatasync %v): %.0f/s", data, l.rate)
	}
	mean := func(xs []float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += x
		}
		return t / float64(len(xs))
	}
	rr.plainRef = max(mean(rr.fsync), mean(rr.fdatasync))
	return nil
}

// medianBy returns the element with the median rate (the upper one of an
// even count); the zero value for none.
func medianBy[T any](xs []T, rate func(T) float64) T {
	var zero T
	if len(xs) == 0 {
		return zero
	}
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(rate(a), rate(b)) })
	return s[len(s)/2]
}

func medianLoop(ls []loopResult) loopResult {
	return medianBy(ls, func(l loopResult) float64 { return l.rate })
}

func verdict(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// num formats a rate with thousands separators.
func num(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	note     string
}

func median(rs []result) result {
	return medianBy(rs, func(r result) float64 { return r.rate })
}

// throughput runs one load test against a fresh broker of kind b.
func throughput(c config, b string, clients, total, round int) (result, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var addr string
	var stop func() (string, error)
	var err error
	switch b {
	case "gateway":
		addr, stop, err = startGateway(ctx, c, fmt.Sprintf("%s-%d-%d", b, clients, round))
	default:
		var m *mochi.Server
		addr, m, err = startMochi()
		stop = func() (string, error) {
			// mochi's Close can deadlock while clients are still being
			// removed (see serveIdleBroker): let them go first.
			for deadline := time.Now().Add(5 * time.Second); atomic.LoadInt64(&m.Info.ClientsConnected) > 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			return "", m.Close()
		}
	}
	if err != nil {
		return result{}, err
	}
	per := max(1, total/clients)
	rep, err := simulator.Run(ctx, simulator.Options{
		Broker: addr, Trucks: clients, Messages: per, Rate: 0, InFlight: 100, QoS: simulator.QoS(1),
		Protocol: "3.1.1", Seed: 1, AckTimeout: time.Minute,
	})
	note, serr := stop()
	if err != nil {
		return result{}, err
	}
	if serr != nil {
		return result{}, serr
	}
	if rep.Acked != int64(per*clients) || rep.Errors != 0 {
		return result{}, fmt.Errorf("acked %d of %d, errors %d", rep.Acked, per*clients, rep.Errors)
	}
	return result{rate: rep.Throughput, p50: rep.LatencyP50.Round(10 * time.Microsecond), p99: rep.LatencyP99.Round(10 * time.Microsecond), note: note}, nil
}

// startMochi starts a bare mochi broker: default capabilities, no hooks
// but allow-all authentication (without one mochi refuses every client).
func startMochi() (string, *mochi.Server, error) {
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	if err := s.AddListener(listeners.NewNet("bench", l)); err != nil {
		return "", nil, err
	}
	if err := s.Serve(); err != nil {
		return "", nil, err
	}
	return l.Addr().String(), s, nil
}

// discardSink acknowledges every message without sending it anywhere.
type discardSink struct{}

func (discardSink) EnsureTopic(context.Context, gateway.TopicSpec) error { return nil }
func (discardSink) Write(context.Context, []gateway.Message) error       { return nil }
func (discardSink) Close() error                                         { return nil }

// startGateway starts the gateway's MQTT server in open mode on a fresh
// buffer (sync always) with the egress pipeline draining it. stop reports
// the buffer's fsyncs, to show the group commit at work.
func startGateway(ctx context.Context, c config, name string) (string, func() (string, error), error) {
	dir := filepath.Join(c.dir, name)
	buf, err := buffer.Open(buffer.Options{Dir: dir, Sync: buffer.SyncAlways}, nil)
	if err != nil {
		return "", nil, err
	}
	var sink gateway.Sink = discardSink{}
	maxBatch := 1 << 20
	if c.kafka != "" {
		ks, err := gateway.NewKafkaSink(gateway.KafkaOptions{Brokers: []string{c.kafka}}, 2000, nil)
		if err != nil {
			buf.Close()
			return "", nil, err
		}
		sink, maxBatch = ks, ks.MaxBatchBytes()
	}
	router, err := gateway.NewRouter([]gateway.Route{{Match: "devices/{device}/{stream}", Topic: "bench-mqtt.{stream}"}})
	if err != nil {
		return "", nil, err
	}
	pipe := gateway.NewPipeline(gateway.EgressOptions{}, buf, nil, router, sink, maxBatch, "bench", nil)
	pctx, stopPipe := context.WithCancel(ctx)
	piped := make(chan error, 1)
	if c.noEgress {
		piped <- nil
	} else {
		go func() { piped <- pipe.Run(pctx) }()
	}
	srv, err := mqtt.New(mqtt.Options{TCP: "127.0.0.1:0"}, buf, nil, nil, nil, nil)
	if err != nil {
		stopPipe()
		buf.Close()
		return "", nil, err
	}
	if err := srv.Start(ctx); err != nil {
		stopPipe()
		buf.Close()
		return "", nil, err
	}
	addr, _ := srv.Addr()
	before := buf.Stats()
	stop := func() (string, error) {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Close(cctx)
		st := buf.Stats()
		stopPipe()
		err = errors.Join(err, <-piped, sink.Close(), buf.Close())
		os.RemoveAll(dir)
		records := st.SyncedRecords - before.SyncedRecords
		fsyncs := st.Fsyncs - before.Fsyncs
		return fmt.Sprintf(", %s: %d records in %d fsyncs (%.0f per fsync)", name, records, fsyncs, float64(records)/float64(max(fsyncs, 1))), err
	}
	return addr, stop, nil
}

type loopResult struct {
	rate     float64
	p50, p99 time.Duration
}

// plainLoop appends 4 KiB blocks to one file, each followed by fsync (or
// fdatasync), for d: the disk's rate of durable small writes without group
// commit.
func plainLoop(dir string, d time.Duration, data bool) (loopResult, error) {
	f, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		return loopResult{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	block := make([]byte, 4096)
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < d {
		t := time.Now()
		if _, err := f.Write(block); err != nil {
			return loopResult{}, err
		}
		if data {
			err = syscall.Fdatasync(int(f.Fd()))
		} else {
			err = f.Sync()
		}
		if err != nil {
			return loopResult{}, err
		}
		lat = append(lat, time.Since(t))
	}
	el := time.Since(start)
	slices.Sort(lat)
	return loopResult{
		rate: float64(len(lat)) / el.Seconds(),
		p50:  lat[len(lat)/2].Round(10 * time.Microsecond),
		p99:  lat[len(lat)*99/100].Round(10 * time.Microsecond),
	}, nil
}

// describeFS names the file system of dir, from /proc/mounts.
func describeFS(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "unknown file system"
	}
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unknown file system"
	}
	best, typ := "", "unknown file system"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		if (abs == f[1] || strings.HasPrefix(abs, strings.TrimSuffix(f[1], "/")+"/")) && len(f[1]) > len(best) {
			best, typ = f[1], f[2]+" on "+f[0]
		}
	}
	return typ
}

type idleResult struct {
	conns             int
	perConnKiB        float64
	stackKiB, heapKiB float64 // of which goroutine stacks and Go heap
}

// measureIdle starts a child process serving a broker of kind b, opens
// c.idle MQTT connections to it and reads the child's resident memory
// before and after.
func measureIdle(c config, b string) (idleResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return idleResult{}, err
	}
	dir := filepath.Join(c.dir, "idle-"+b)
	cmd := exec.Command(exe, "-serve-idle", b, "-dir", dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return idleResult{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return idleResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return idleResult{}, err
	}
	defer func() {
		fmt.Fprintln(stdin, "quit")
		stdin.Close()
		cmd.Wait()
		os.RemoveAll(dir)
	}()
	lines := bufio.NewScanner(stdout)
	ask := func(q string) (string, error) {
		if q != "" {
			if _, err := fmt.Fprintln(stdin, q); err != nil {
				return "", err
			}
		}
		if !lines.Scan() {
			return "", fmt.Errorf("child ended: %v", lines.Err())
		}
		return lines.Text(), nil
	}
	addr, err := ask("")
	if err != nil {
		return idleResult{}, err
	}
	before, err := askMem(ask)
	if err != nil {
		return idleResult{}, err
	}
	// Each process may hold only so many descriptors: the connections are
	// opened by dialer children, at most dialerConns each.
	var dialers []*exec.Cmd
	var holds []io.Closer // the dialers' stdin: they hold their connections until it closes
	defer func() {
		for i, d := range dialers {
			holds[i].Close()
			d.Wait()
		}
	}()
	for off := 0; off < c.idle; off += dialerConns {
		n := min(dialerConns, c.idle-off)
		d := exec.Command(exe, "-dial-idle", addr, "-idle", strconv.Itoa(n), "-offset", strconv.Itoa(off))
		d.Stderr = os.Stderr
		hold, err := d.StdinPipe()
		if err != nil {
			return idleResult{}, err
		}
		dout, err := d.StdoutPipe()
		if err != nil {
			return idleResult{}, err
		}
		if err := d.Start(); err != nil {
			return idleResult{}, err
		}
		dialers, holds = append(dialers, d), append(holds, hold)
		var got int
		if _, err := fmt.Fscan(dout, &got); err != nil || got != n {
			return idleResult{}, fmt.Errorf("dialer from %d opened %d of %d connections: %v", off, got, n, err)
		}
	}
	connected, err := ask("clients")
	if err != nil {
		return idleResult{}, err
	}
	if connected != strconv.Itoa(c.idle) {
		return idleResult{}, fmt.Errorf("child has %s clients connected, want %d", connected, c.idle)
	}
	time.Sleep(time.Second)
	after, err := askMem(ask)
	if err != nil {
		return idleResult{}, err
	}
	progress("idle %s: VmRSS %d KiB before, %d KiB with %d connections", b, before.rss, after.rss, c.idle)
	per := func(a, b int64) float64 { return float64(b-a) / float64(c.idle) }
	return idleResult{conns: c.idle, perConnKiB: per(before.rss, after.rss),
		stackKiB: per(before.stack, after.stack), heapKiB: per(before.heap, after.heap)}, nil
}

// memSample is the child's VmRSS, goroutine stacks and heap in use, KiB.
type memSample struct{ rss, stack, heap int64 }

func askMem(ask func(string) (string, error)) (memSample, error) {
	s, err := ask("rss")
	if err != nil {
		return memSample{}, err
	}
	var m memSample
	if _, err := fmt.Sscan(s, &m.rss, &m.stack, &m.heap); err != nil {
		return m, fmt.Errorf("child said %q: %w", s, err)
	}
	return m, nil
}

// dialerConns is how many connections one dialer process opens.
const dialerConns = 10000

// openIdle opens n MQTT 3.1.1 connections (clean session, keep-alive
// 300 s, client ids from offset on) and waits for each CONNACK. Source
// addresses rotate over 127.0.0.0/8 so that loopback's ephemeral ports do
// not run out (a bound source address has half the ephemeral range, and
// earlier runs leave ports in TIME_WAIT).
func openIdle(addr string, n, offset int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				cn, err := dialIdle(addr, offset+i)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = cn
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	out := conns[:0]
	for _, cn := range conns {
		if cn != nil {
			out = append(out, cn)
		}
	}
	return out, firstErr
}

func dialIdle(addr string, i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 1, byte(i/2000), 1)}}
	cn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("idle-%06d", i)
	pk := []byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0x01, 0x2c, 0, byte(len(id))}
	pk = append(pk, id...)
	if _, err := cn.Write(pk); err != nil {
		cn.Close()
		return nil, err
	}
	cn.SetReadDeadline(time.Now().Add(30 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(cn, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		cn.Close()
		return nil, fmt.Errorf("no CONNACK: %x %v", ack, err)
	}
	cn.SetReadDeadline(time.Time{})
	return cn, nil
}

// serveIdleBroker is the child of measureIdle: it prints the broker's
// address, then answers "rss" (VmRSS in KiB after a GC that returns freed
// memory to the OS) and "clients" (connected clients) until "quit".
func serveIdleBroker(kind, dir string) error {
	var addr string
	var clients func() int64
	var stop func()
	switch kind {
	case "gateway":
		buf, err := buffer.Open(buffer.Options{Dir: dir, Sync: buffer.SyncAlways}, nil)
		if err != nil {
			return err
		}
		defer buf.Close()
		srv, err := mqtt.New(mqtt.Options{TCP: "127.0.0.1:0"}, buf, nil, nil, nil, nil)
		if err != nil {
			return err
		}
		if err := srv.Start(context.Background()); err != nil {
			return err
		}
		addr, _ = srv.Addr()
		clients = func() int64 { return srv.Stats().Connections }
		stop = func() { srv.Close(context.Background()) }
	case "mochi":
		a, m, err := startMochi()
		if err != nil {
			return err
		}
		addr = a
		clients = func() int64 { return atomic.LoadInt64(&m.Info.ClientsConnected) }
		// Not m.Close: mochi's listener close takes its clients map's
		// read lock twice and deadlocks while clients are leaving, which
		// they are, all at once, when this measurement ends. The process
		// exits instead.
		stop = func() {}
	default:
		return fmt.Errorf("unknown broker %q", kind)
	}
	defer stop()
	fmt.Println(addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "rss":
			runtime.GC()
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Println(vmRSS(), ms.StackInuse>>10, ms.HeapInuse>>10)
		case "clients":
			fmt.Println(clients())
		case "quit":
			return nil
		}
	}
	return in.Err()
}

// vmRSS is this process's resident set in KiB.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return -1
}
