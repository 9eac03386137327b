// Command footprint measures the gateway's edge footprint: the size of the
// static binary, the time from exec to the MQTT listener accepting, the
// idle RSS, and the RSS with many idle MQTT connections, next to a bare
// mochi broker (mochi-mqtt v2 as released, with its defaults) holding the
// same connections.
//
//	go run ./bench/footprint [-conns 20000] [-settle 3s,150s] [-ping=true] [-transport tcp] [-brokers gateway,mochi,mochi-fork]
//
// Each connection is what an idle device leaves behind: an MQTT 3.1.1
// CONNECT (clean session, keep-alive 60 s) answered by a CONNACK and, with
// -ping, a PINGREQ answered by a PINGRESP right away and then once a
// keep-alive period, as devices send when they have nothing to publish.
// (Without -ping, the broker closes the connections after 1.5 keep-alive
// periods, so -settle must stay under 90 s.) -transport websocket carries
// the same over MQTT over WebSocket. Connections are opened by dialer child
// processes (each process may hold only so many descriptors).
//
// The broker's VmRSS is read at each -settle point after the last CONNACK,
// without forcing a GC: the figure is what the process holds, as top shows
// it. Right after connecting, the heap holds little garbage yet; by 150 s
// the Go runtime has run its periodic GC (at least every 2 minutes) and the
// heap has grown with whatever the broker allocates while idle, which is
// what a gateway holding idle devices for hours looks like. The runtime's
// own counters (the gateway's /metrics, the mochi child's runtime.MemStats)
// split the growth into goroutine stacks, heap in use and heap kept from
// the OS.
//
// The gateway embeds iotgw's copy of mochi-mqtt (third_party/mochi-mqtt,
// through a replace in go.mod; its PATCHES.md says what changes). The mochi
// broker is this program built against the mochi-mqtt release that copy
// started from, through a temporary go.mod without the replace: the
// repository's go.mod is left alone. mochi-fork is this program as built,
// a bare broker on iotgw's copy.
//
// Kafka is not needed: the gateway starts and buffers without it.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// dialerConns is how many connections one dialer process holds.
const dialerConns = 10000

// keepAlivePeriod is the connections' MQTT keep-alive.
const keepAlivePeriod = 60 * time.Second

// fdReserve is how many descriptors the broker needs besides its
// connections: listeners, the buffer's files, epoll, stdio.
const fdReserve = 64

func main() {
	conns := flag.Int("conns", 20000, "idle MQTT connections to hold open (at most the open-files hard limit less a reserve)")
	ping := flag.Bool("ping", true, "send a PINGREQ on each connection after its CONNACK and then once a keep-alive period (60 s), as idle devices do")
	brokers := flag.String("brokers", "gateway,mochi", "brokers to measure, comma separated: gateway, mochi (mochi-mqtt as released), mochi-fork (iotgw's copy, bare)")
	transport := flag.String("transport", "tcp", "tcp or websocket")
	settle := flag.String("settle", "3s,150s", "read the broker's memory this long after the last CONNACK (a comma-separated list of increasing durations)")
	serveMochi := flag.Bool("serve-mochi", false, "internal: run a bare mochi broker, print its address, answer \"mem\" on stdin")
	dial := flag.String("dial", "", "internal: open -conns connections to this address from -offset on, print how many, hold them until stdin closes")
	offset := flag.Int("offset", 0, "internal: see -dial")
	flag.Parse()
	var err error
	switch {
	case *transport != "tcp" && *transport != "websocket":
		err = fmt.Errorf("-transport %q: tcp or websocket", *transport)
	case *serveMochi:
		err = runMochi(*transport)
	case *dial != "":
		err = runDialer(*transport, *dial, *conns, *offset, *ping)
	default:
		var points []time.Duration
		if points, err = parseSettle(*settle); err == nil {
			err = run(*conns, *ping, points, *transport, strings.Split(*brokers, ","))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/footprint:", err)
		os.Exit(1)
	}
}

// sample is one look at a broker process; sizes in bytes.
type sample struct {
	rss        int64
	goroutines int64
	stack      int64 // goroutine stacks in use
	heapInuse  int64 // heap spans in use (live objects, garbage not yet swept, fragmentation)
	heapAlloc  int64 // heap objects allocated and not yet freed by a GC
	heapKept   int64 // free heap spans not returned to the OS
	sys        int64 // everything the runtime got from the OS
}

// broker is one process under measurement.
type broker struct {
	name    string
	pid     int
	addr    string
	startup time.Duration
	binary  int64 // bytes; 0 when not a binary of its own
	mem     func() (sample, error)
	stop    func()
}

// parseSettle reads -settle.
func parseSettle(list string) ([]time.Duration, error) {
	var points []time.Duration
	for _, f := range strings.Split(list, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 || (len(points) > 0 && d <= points[len(points)-1]) {
			return nil, fmt.Errorf("-settle %q: want increasing positive durations such as 3s,150s", list)
		}
		points = append(points, d)
	}
	return points, nil
}

// result is one broker's measurement: idle, then at each settle point.
type result struct {
	b      *broker
	idle   sample
	loaded []sample
}

func run(nconns int, ping bool, settle []time.Duration, transport string, names []string) error {
	hard := raiseNoFile()
	note := ""
	if limit := int(hard) - fdReserve; nconns > limit {
		note = fmt.Sprintf(" (%d requested; a process may hold %d open files on this machine, the broker needs %d besides its connections)", nconns, hard, fdReserve)
		nconns = limit
	}
	dir, err := os.MkdirTemp("", "iotgw-footprint")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var results []result
	for _, name := range names {
		bin := filepath.Join(dir, name)
		var b *broker
		switch name {
		case "gateway":
			b, err = startGateway(bin, transport)
		case "mochi":
			var flags []string
			if flags, err = upstreamMochi(dir); err == nil {
				err = goBuild(flags, bin, "./bench/footprint")
			}
			if err == nil {
				b, err = startMochi(bin, transport)
			}
		case "mochi-fork":
			b, err = startMochi(self, transport)
		default:
			err = fmt.Errorf("unknown broker %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		b.name = name
		r, err := measure(b, nconns, ping, settle, transport)
		b.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, r)
	}

	cmdline := fmt.Sprintf("go run ./bench/footprint -conns %d -settle %s -ping=%t -transport %s -brokers %s", nconns, joinDurations(settle), ping, transport, strings.Join(names, ","))
	mochiVersion := "mochi-mqtt " + mochiModVersion()
	over := ""
	if transport == "websocket" {
		over = " over WebSocket"
	}
	shape := "CONNECT, CONNACK"
	if ping {
		shape += ", PINGREQ/PINGRESP, then a PINGREQ a minute"
	}
	fmt.Printf("## Edge footprint\n\n`%s` (linux/amd64, CGO_ENABLED=0, -ldflags '-s -w'; %s)\n\n", cmdline, runtime.Version())
	fmt.Printf("%d idle MQTT 3.1.1 connections%s%s (%s); VmRSS read after the last CONNACK, no forced GC.", nconns, over, note, shape)
	fmt.Printf(" gateway: iotgw, on its copy of %s with iotgw's patches (`third_party/mochi-mqtt`, see its PATCHES.md).", mochiVersion)
	if slices.Contains(names, "mochi") {
		fmt.Printf(" mochi: a bare %s broker as released, default options.", mochiVersion)
	}
	if slices.Contains(names, "mochi-fork") {
		fmt.Printf(" mochi-fork: a bare broker on iotgw's copy, default options.")
	}
	fmt.Printf("\n\n")
	last := len(settle) - 1
	fmt.Printf("| measure | value | target |\n|---|---|---|\n")
	for _, r := range results {
		if r.b.binary > 0 {
			fmt.Printf("| %s binary size | %.1f MiB | |\n", r.b.name, float64(r.b.binary)/(1<<20))
			fmt.Printf("| %s exec to MQTT listening | %s | |\n", r.b.name, r.b.startup.Round(time.Millisecond))
		}
		fmt.Printf("| %s idle RSS | %.1f MiB | |\n", r.b.name, float64(r.idle.rss)/(1<<20))
		for i, d := range settle {
			fmt.Printf("| %s RSS with %d idle connections, %s after connecting | %.1f MiB | |\n", r.b.name, nconns, d, float64(r.loaded[i].rss)/(1<<20))
		}
		for i, d := range settle {
			target := ""
			if r.b.name == "gateway" {
				target = "≤ 20 KiB"
			}
			fmt.Printf("| **%s RSS per idle connection, %s after connecting** | **%.1f KiB** | %s |\n", r.b.name, d, r.perConn(i, nconns), target)
		}
	}
	fmt.Printf("\nPer idle connection, growth over the idle process; the Go runtime's counters:\n\n")
	fmt.Printf("| broker | after | RSS | goroutines | stacks | heap in use | of which allocated | heap kept from the OS |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		for i, d := range settle {
			l := r.loaded[i]
			per := func(v, idle int64) float64 { return kib(v-idle, nconns) }
			fmt.Printf("| %s | %s | %.1f KiB | %.2f | %.1f KiB | %.1f KiB | %.1f KiB | %.1f KiB |\n", r.b.name, d,
				per(l.rss, r.idle.rss), float64(l.goroutines-r.idle.goroutines)/float64(nconns), per(l.stack, r.idle.stack),
				per(l.heapInuse, r.idle.heapInuse), per(l.heapAlloc, r.idle.heapAlloc), per(l.heapKept, r.idle.heapKept))
		}
	}
	fmt.Println()
	explain(results, last, nconns)
	for _, r := range results {
		switch r.b.name {
		case "gateway":
			fmt.Printf("RESULT footprint_kib_per_conn %.2f 20\nRESULT footprint_kib_per_conn_at_connect %.2f 0\nRESULT footprint_binary_mib %.2f 0\nRESULT footprint_idle_rss_mib %.2f 0\nRESULT footprint_startup_ms %d 0\n",
				r.perConn(last, nconns), r.perConn(0, nconns), float64(r.b.binary)/(1<<20), float64(r.idle.rss)/(1<<20), r.b.startup.Milliseconds())
		case "mochi":
			fmt.Printf("RESULT footprint_mochi_kib_per_conn %.2f 0\n", r.perConn(last, nconns))
		case "mochi-fork":
			fmt.Printf("RESULT footprint_mochi_fork_kib_per_conn %.2f 0\n", r.perConn(last, nconns))
		}
	}
	return nil
}

// explain says where a connection's memory goes, from the runtime's
// counters at settle point i, and what iotgw's copy of mochi changes.
func explain(results []result, i, nconns int) {
	for _, r := range results {
		l := r.loaded[i]
		per := func(v, idle int64) float64 { return kib(v-idle, nconns) }
		fmt.Printf("- **%s**: %.1f KiB per connection, of which %.1f KiB goroutine stacks (%.2f goroutines), %.1f KiB heap in use (live objects and garbage not yet collected) and %.1f KiB heap the runtime freed but kept from the OS.\n",
			r.b.name, r.perConn(i, nconns), per(l.stack, r.idle.stack), float64(l.goroutines-r.idle.goroutines)/float64(nconns),
			per(l.heapInuse, r.idle.heapInuse), per(l.heapKept, r.idle.heapKept))
	}
	fmt.Printf(`
mochi runs each client on a read goroutine and, as released, a write goroutine parked on the client's outbound
queue (4 KiB of stack: its frame copies an 800-byte packet). Its read goroutine's stack is 16 KiB: mochi passes
packets by value several frames deep (and the compiler copies them into temporaries on the way), so handling the
CONNECT or a PINGREQ needs more than 8 KiB, and idle, under attachClient and Client.Read (4.6 KB of frames), it
uses more than the quarter of 16 KiB below which the garbage collector would shrink it. Every second mochi also
copies its whole clients map twice (expired clients, expired inflights) and each client's inflight table, about
200 bytes of garbage per client per second, so between collections the heap of an idle broker grows to two or
three times what is live. iotgw's copy (third_party/mochi-mqtt, PATCHES.md) starts a write goroutine only while
packets are queued, sweeps the clients through a pooled slice, and passes packets by pointer on the read path:
CONNECT, SUBSCRIBE and PINGREQ are handled within an 8 KiB stack, of which an idle client uses under 2 KiB.

`)
}

// perConn is the RSS growth per connection at settle point i, KiB.
func (r result) perConn(i, nconns int) float64 { return kib(r.loaded[i].rss-r.idle.rss, nconns) }

func joinDurations(ds []time.Duration) string {
	var fs []string
	for _, d := range ds {
		fs = append(fs, d.String())
	}
	return strings.Join(fs, ",")
}

// measure samples the broker idle, opens the connections, and samples it
// at each settle point with them held.
func measure(b *broker, nconns int, ping bool, settle []time.Duration, transport string) (result, error) {
	r := result{b: b}
	time.Sleep(2 * time.Second)
	var err error
	if r.idle, err = b.mem(); err != nil {
		return r, err
	}
	exe, err := os.Executable()
	if err != nil {
		return r, err
	}
	// The dialers hold their connections until their stdin closes.
	var dialers []*exec.Cmd
	var holds []io.Closer
	defer func() {
		for i, d := range dialers {
			holds[i].Close()
			d.Wait()
		}
	}()
	for off := 0; off < nconns; off += dialerConns {
		n := min(dialerConns, nconns-off)
		d := exec.Command(exe, "-dial", b.addr, "-transport", transport, "-conns", strconv.Itoa(n), "-offset", strconv.Itoa(off), "-ping="+strconv.FormatBool(ping))
		d.Stderr = os.Stderr
		hold, err := d.StdinPipe()
		if err != nil {
			return r, err
		}
		out, err := d.StdoutPipe()
		if err != nil {
			return r, err
		}
		if err := d.Start(); err != nil {
			return r, err
		}
		dialers, holds = append(dialers, d), append(holds, hold)
		var got int
		if _, err := fmt.Fscan(out, &got); err != nil || got != n {
			return r, fmt.Errorf("dialer from %d opened %d of %d connections: %v", off, got, n, err)
		}
	}
	connected := time.Now()
	for _, d := range settle {
		time.Sleep(time.Until(connected.Add(d)))
		l, err := b.mem()
		if err != nil {
			return r, err
		}
		if l.goroutines-r.idle.goroutines < int64(nconns)*9/10 { // each connection has a goroutine at least
			return r, fmt.Errorf("%s after connecting: %d goroutines, the connections are gone (ping=false and a settle time past the keep-alive?)", d, l.goroutines)
		}
		progress("%s, %s after connecting: %.1f KiB per connection", b.name, d, kib(l.rss-r.idle.rss, nconns))
		r.loaded = append(r.loaded, l)
	}
	return r, nil
}

// startGateway builds the iotgw binary and runs it (open auth, no Kafka
// reachable, no CoAP) with its admin HTTP server on loopback, as in
// production, whose /metrics carries the Go runtime's counters.
func startGateway(bin, transport string) (*broker, error) {
	if err := goBuild(nil, bin, "./cmd/iotgw"); err != nil {
		return nil, err
	}
	st, err := os.Stat(bin)
	if err != nil {
		return nil, err
	}
	addr, admin := freeAddr(), freeAddr()
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(),
		"IOTGW_KAFKA_BROKERS=127.0.0.1:1", "IOTGW_BUFFER_DIR="+bin+".buf", "IOTGW_AUTH_MODE=open",
		"IOTGW_HTTP_LISTEN="+admin, "IOTGW_COAP_UDP=off", "IOTGW_LOG_LEVEL=error")
	if transport == "websocket" {
		cmd.Env = append(cmd.Env, "IOTGW_MQTT_TCP=127.0.0.1:0", "IOTGW_MQTT_WEBSOCKET="+addr)
	} else {
		cmd.Env = append(cmd.Env, "IOTGW_MQTT_TCP="+addr)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 20*time.Second {
			stop()
			return nil, fmt.Errorf("not listening after 20s: %s", stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
	pid := cmd.Process.Pid
	return &broker{
		name: "gateway", pid: pid, addr: addr, startup: time.Since(start), binary: st.Size(), stop: stop,
		mem: func() (sample, error) {
			s, err := scrape("http://" + admin + "/metrics")
			s.rss = rss(pid)
			return s, err
		},
	}, nil
}

// goBuild builds a static, stripped binary.
func goBuild(flags []string, out, pkg string) error {
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w", "-o", out}, flags...)
	build := exec.Command("go", append(args, pkg)...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build %s: %w", pkg, err)
	}
	return nil
}

const mochiModule = "github.com/mochi-mqtt/server/v2"

// upstreamMochi writes a copy of go.mod and go.sum to dir without the
// replace of mochi by iotgw's copy, and returns the build flags that use
// it: a build against the mochi-mqtt release go.mod requires.
func upstreamMochi(dir string) ([]string, error) {
	modfile, sumfile := filepath.Join(dir, "upstream.mod"), filepath.Join(dir, "upstream.sum")
	mod, err := os.ReadFile("go.mod")
	if err != nil {
		return nil, fmt.Errorf("run from the repository root: %w", err)
	}
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		return nil, err
	}
	// go.sum has no checksums of the release (the replace hides it): add
	// them from the module cache (go mod download fetches it if missing).
	out, err := exec.Command("go", "mod", "download", "-json", mochiModule+"@"+mochiModVersion()).Output()
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", mochiModule, err)
	}
	var dl struct{ Version, Sum, GoModSum string }
	if err := json.Unmarshal(out, &dl); err != nil {
		return nil, fmt.Errorf("download %s: %w", mochiModule, err)
	}
	sum = fmt.Appendf(sum, "%s %s %s\n%s %s/go.mod %s\n", mochiModule, dl.Version, dl.Sum, mochiModule, dl.Version, dl.GoModSum)
	if err := os.WriteFile(modfile, mod, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(sumfile, sum, 0o644); err != nil {
		return nil, err
	}
	edit := exec.Command("go", "mod", "edit", "-modfile", modfile, "-dropreplace", mochiModule)
	edit.Stderr = os.Stderr
	if err := edit.Run(); err != nil {
		return nil, fmt.Errorf("drop the replace of mochi: %w", err)
	}
	// -mod=mod: the release may need go.sum lines iotgw's copy does not.
	return []string{"-modfile", modfile, "-mod=mod"}, nil
}

// mochiModVersion is go.mod's mochi version.
func mochiModVersion() string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mochiModule).Output()
	if err != nil {
		return "(unknown version)"
	}
	return strings.TrimSpace(string(out))
}

// scrape reads the Go collector's gauges from a Prometheus endpoint.
func scrape(url string) (sample, error) {
	var s sample
	resp, err := http.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "go_") {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			m[name] = int64(f)
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	for _, k := range []string{"go_goroutines", "go_memstats_stack_inuse_bytes", "go_memstats_heap_inuse_bytes",
		"go_memstats_heap_alloc_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_sys_bytes"} {
		if _, ok := m[k]; !ok {
			return s, fmt.Errorf("%s: no %s", url, k)
		}
	}
	s.goroutines = m["go_goroutines"]
	s.stack = m["go_memstats_stack_inuse_bytes"]
	s.heapInuse = m["go_memstats_heap_inuse_bytes"]
	s.heapAlloc = m["go_memstats_heap_alloc_bytes"]
	s.heapKept = m["go_memstats_heap_idle_bytes"] - m["go_memstats_heap_released_bytes"]
	s.sys = m["go_memstats_sys_bytes"]
	return s, nil
}

// startMochi runs exe (this program, built against the mochi to measure)
// as a bare mochi broker in a child process.
func startMochi(exe, transport string) (*broker, error) {
	cmd := exec.Command(exe, "-serve-mochi", "-transport", transport)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { in.Close(); cmd.Wait() }
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		stop()
		return nil, fmt.Errorf("mochi child ended: %v", lines.Err())
	}
	pid := cmd.Process.Pid
	return &broker{
		name: "mochi", pid: pid, addr: lines.Text(), startup: time.Since(start), stop: stop,
		mem: func() (sample, error) {
			var s sample
			if _, err := fmt.Fprintln(in, "mem"); err != nil {
				return s, err
			}
			if !lines.Scan() {
				return s, fmt.Errorf("mochi child ended: %v", lines.Err())
			}
			_, err := fmt.Sscan(lines.Text(), &s.goroutines, &s.stack, &s.heapInuse, &s.heapAlloc, &s.heapKept, &s.sys)
			s.rss = rss(pid)
			return s, err
		},
	}, nil
}

// runMochi is the -serve-mochi child: mochi with its default options and
// capabilities, every client allowed.
func runMochi(transport string) error {
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	var l listeners.Listener
	if transport == "websocket" {
		l = listeners.NewWebsocket(listeners.Config{ID: "footprint", Address: freeAddr()})
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		l = listeners.NewNet("footprint", ln)
	}
	if err := s.AddListener(l); err != nil {
		return err
	}
	if err := s.Serve(); err != nil {
		return err
	}
	// Not s.Close: the process exits when stdin closes.
	fmt.Println(l.Address())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "mem" {
			continue
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Println(runtime.NumGoroutine(), ms.StackInuse, ms.HeapInuse, ms.HeapAlloc, ms.HeapIdle-ms.HeapReleased, ms.Sys)
	}
	return in.Err()
}

// runDialer is the -dial child: it opens n connections, prints n once
// every one has its CONNACK (and PINGRESP), and holds them until stdin
// closes.
func runDialer(transport, addr string, n, offset int, ping bool) error {
	raiseNoFile()
	conns := make([]mqttConn, n)
	next := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := dialIdle(transport, addr, offset+i, ping)
				if err != nil {
					select {
					case errs <- fmt.Errorf("connection %d: %w", offset+i, err):
					default:
					}
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Println(n)
	var closing atomic.Bool
	if ping {
		go keepAlive(conns, &closing)
	}
	io.Copy(io.Discard, os.Stdin)
	closing.Store(true)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// keepAlive sends each connection a PINGREQ once a keep-alive period,
// spread evenly over the period, until closing.
func keepAlive(conns []mqttConn, closing *atomic.Bool) {
	gap := keepAlivePeriod / time.Duration(len(conns))
	for {
		for i, c := range conns {
			time.Sleep(gap)
			if closing.Load() {
				return
			}
			if err := c.exchange([]byte{0xc0, 0x00}, []byte{0xd0, 0x00}); err != nil && !closing.Load() {
				fmt.Fprintf(os.Stderr, "bench/footprint: dialer: connection %d: ping: %v\n", i, err)
			}
		}
	}
}

// mqttConn is a client connection that the dialer holds.
type mqttConn interface {
	// exchange writes req and expects exactly want back.
	exchange(req, want []byte) error
	Close() error
}

// dialIdle opens one connection as an idle device leaves it. Source
// addresses rotate over 127.0.0.0/8 so that loopback's ephemeral ports do
// not run out across runs (closed connections sit in TIME_WAIT).
func dialIdle(transport, addr string, i int, ping bool) (mqttConn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 1, byte(i/2000), 1)}}
	var c mqttConn
	if transport == "websocket" {
		wd := websocket.Dialer{NetDialContext: d.DialContext, HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"mqtt"},
			ReadBufferSize: 256, WriteBufferSize: 256}
		ws, _, err := wd.Dial("ws://"+addr+"/mqtt", nil)
		if err != nil {
			return nil, err
		}
		c = wsConn{ws}
	} else {
		tc, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		c = tcpConn{tc}
	}
	// MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, empty client id
	// (the broker assigns one).
	connect := []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, byte(keepAlivePeriod / time.Second), 0, 0}
	if err := c.exchange(connect, []byte{0x20, 0x02, 0x00, 0x00}); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	if ping {
		if err := c.exchange([]byte{0xc0, 0x00}, []byte{0xd0, 0x00}); err != nil {
			c.Close()
			return nil, fmt.Errorf("ping: %w", err)
		}
	}
	return c, nil
}

type tcpConn struct{ net.Conn }

func (c tcpConn) exchange(req, want []byte) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(req); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	return compare(got, want)
}

// wsConn carries each packet in a binary message; the brokers answer each
// with one message.
type wsConn struct{ *websocket.Conn }

func (c wsConn) exchange(req, want []byte) error {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	if err := c.WriteMessage(websocket.BinaryMessage, req); err != nil {
		return err
	}
	_, got, err := c.ReadMessage()
	if err != nil {
		return err
	}
	return compare(got, want)
}

func compare(got, want []byte) error {
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got % x, want % x", got, want)
	}
	return nil
}

func kib(b int64, n int) float64 { return float64(b) / 1024 / float64(n) }

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/footprint: "+format+"\n", args...)
}

func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// raiseNoFile lifts the soft open-files limit to the hard one (children
// inherit it) and returns the hard limit.
func raiseNoFile() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return l.Max
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:21883"
	}
	defer l.Close()
	return l.Addr().String()
}
