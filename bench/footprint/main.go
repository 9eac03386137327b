// Command footprint measures the gateway's edge footprint: the size of the
// static binary, the time from exec to the MQTT listener accepting, the
// idle RSS, and the RSS with many idle MQTT connections, next to a bare
// mochi broker (mochi-mqtt v2 with its defaults) holding the same
// connections.
//
//	go run ./bench/footprint [-conns 20000] [-ping=true] [-brokers gateway,mochi]
//
// Each connection is what an idle device leaves behind: an MQTT 3.1.1
// CONNECT (clean session, keep-alive 60 s) answered by a CONNACK and, with
// -ping, one PINGREQ answered by a PINGRESP, as every device sends when its
// keep-alive runs out. Connections are opened by dialer child processes
// (each process may hold only so many descriptors). The broker's VmRSS is
// read 3 s after the last CONNACK, without forcing a GC: the figure is what
// the process holds, as top shows it. The Go runtime's own counters (the
// gateway's /metrics, the mochi child's runtime.MemStats) split the growth
// into goroutine stacks, heap in use and heap kept from the OS.
//
// Kafka is not needed: the gateway starts and buffers without it.
package main

import (
	"bufio"
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// dialerConns is how many connections one dialer process holds.
const dialerConns = 10000

// fdReserve is how many descriptors the broker needs besides its
// connections: listeners, the buffer's files, epoll, stdio.
const fdReserve = 64

func main() {
	conns := flag.Int("conns", 20000, "idle MQTT connections to hold open (at most the open-files hard limit less a reserve)")
	ping := flag.Bool("ping", true, "send one PINGREQ on each connection after its CONNACK, as a device does when its keep-alive runs out")
	brokers := flag.String("brokers", "gateway,mochi", "brokers to measure, comma separated: gateway, mochi")
	serveMochi := flag.Bool("serve-mochi", false, "internal: run a bare mochi broker, print its address, answer \"mem\" on stdin")
	dial := flag.String("dial", "", "internal: open -conns connections to this address from -offset on, print how many, hold them until stdin closes")
	offset := flag.Int("offset", 0, "internal: see -dial")
	flag.Parse()
	var err error
	switch {
	case *serveMochi:
		err = runMochi()
	case *dial != "":
		err = runDialer(*dial, *conns, *offset, *ping)
	default:
		err = run(*conns, *ping, strings.Split(*brokers, ","))
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

func run(nconns int, ping bool, names []string) error {
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

	type result struct {
		b            *broker
		idle, loaded sample
	}
	var results []result
	for _, name := range names {
		var b *broker
		switch name {
		case "gateway":
			b, err = startGateway(dir)
		case "mochi":
			b, err = startMochi()
		default:
			err = fmt.Errorf("unknown broker %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		idle, loaded, err := measure(b, nconns, ping)
		b.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		progress("%s: %.1f KiB per connection", name, kib(loaded.rss-idle.rss, nconns))
		results = append(results, result{b, idle, loaded})
	}

	shape := "CONNECT, CONNACK"
	if ping {
		shape += ", one PINGREQ/PINGRESP"
	}
	fmt.Printf("## Edge footprint\n\n`go run ./bench/footprint -conns %d -ping=%t` (linux/amd64, CGO_ENABLED=0, -ldflags '-s -w'; %s, %d idle MQTT 3.1.1 connections%s; VmRSS 3 s after the last CONNACK, no forced GC)\n\n",
		nconns, ping, runtime.Version(), nconns, note)
	fmt.Printf("| measure | value | target |\n|---|---|---|\n")
	for _, r := range results {
		if r.b.binary > 0 {
			fmt.Printf("| %s binary size | %.1f MiB | |\n", r.b.name, float64(r.b.binary)/(1<<20))
			fmt.Printf("| %s exec to MQTT listening | %s | |\n", r.b.name, r.b.startup.Round(time.Millisecond))
		}
		fmt.Printf("| %s idle RSS | %.1f MiB | |\n", r.b.name, float64(r.idle.rss)/(1<<20))
		fmt.Printf("| %s RSS with %d idle MQTT connections | %.1f MiB | |\n", r.b.name, nconns, float64(r.loaded.rss)/(1<<20))
		target := ""
		if r.b.name == "gateway" {
			target = "≤ 20 KiB"
		}
		fmt.Printf("| **%s RSS per idle connection** | **%.1f KiB** | %s |\n", r.b.name, kib(r.loaded.rss-r.idle.rss, nconns), target)
	}
	fmt.Printf("\nPer idle connection (%s), growth over the idle process; the Go runtime's counters:\n\n", shape)
	fmt.Printf("| broker | RSS | goroutines | stacks | heap in use | of which allocated | heap kept from the OS | runtime's memory from the OS |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		d := func(f func(sample) int64) float64 { return kib(f(r.loaded)-f(r.idle), nconns) }
		fmt.Printf("| %s | %.1f KiB | %.2f | %.1f KiB | %.1f KiB | %.1f KiB | %.1f KiB | %.1f KiB |\n", r.b.name,
			d(func(s sample) int64 { return s.rss }),
			float64(r.loaded.goroutines-r.idle.goroutines)/float64(nconns),
			d(func(s sample) int64 { return s.stack }),
			d(func(s sample) int64 { return s.heapInuse }),
			d(func(s sample) int64 { return s.heapAlloc }),
			d(func(s sample) int64 { return s.heapKept }),
			d(func(s sample) int64 { return s.sys }))
	}
	fmt.Println()
	for _, r := range results {
		switch r.b.name {
		case "gateway":
			fmt.Printf("RESULT footprint_kib_per_conn %.2f 20\nRESULT footprint_binary_mib %.2f 0\nRESULT footprint_idle_rss_mib %.2f 0\nRESULT footprint_startup_ms %d 0\n",
				kib(r.loaded.rss-r.idle.rss, nconns), float64(r.b.binary)/(1<<20), float64(r.idle.rss)/(1<<20), r.b.startup.Milliseconds())
		case "mochi":
			fmt.Printf("RESULT footprint_mochi_kib_per_conn %.2f 0\n", kib(r.loaded.rss-r.idle.rss, nconns))
		}
	}
	return nil
}

// measure samples the broker idle, opens the connections, and samples it
// again with them held.
func measure(b *broker, nconns int, ping bool) (idle, loaded sample, err error) {
	time.Sleep(2 * time.Second)
	if idle, err = b.mem(); err != nil {
		return idle, loaded, err
	}
	exe, err := os.Executable()
	if err != nil {
		return idle, loaded, err
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
		d := exec.Command(exe, "-dial", b.addr, "-conns", strconv.Itoa(n), "-offset", strconv.Itoa(off), "-ping="+strconv.FormatBool(ping))
		d.Stderr = os.Stderr
		hold, err := d.StdinPipe()
		if err != nil {
			return idle, loaded, err
		}
		out, err := d.StdoutPipe()
		if err != nil {
			return idle, loaded, err
		}
		if err := d.Start(); err != nil {
			return idle, loaded, err
		}
		dialers, holds = append(dialers, d), append(holds, hold)
		var got int
		if _, err := fmt.Fscan(out, &got); err != nil || got != n {
			return idle, loaded, fmt.Errorf("dialer from %d opened %d of %d connections: %v", off, got, n, err)
		}
	}
	time.Sleep(3 * time.Second)
	loaded, err = b.mem()
	return idle, loaded, err
}

// startGateway builds the iotgw binary and runs it (open auth, no Kafka
// reachable, no CoAP) with its admin HTTP server on loopback, whose
// /metrics carries the Go runtime's counters.
func startGateway(dir string) (*broker, error) {
	bin := filepath.Join(dir, "iotgw")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/iotgw")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	st, err := os.Stat(bin)
	if err != nil {
		return nil, err
	}
	addr, admin := freeAddr(), freeAddr()
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(),
		"IOTGW_KAFKA_BROKERS=127.0.0.1:1", "IOTGW_BUFFER_DIR="+filepath.Join(dir, "buf"), "IOTGW_AUTH_MODE=open",
		"IOTGW_MQTT_TCP="+addr, "IOTGW_HTTP_LISTEN="+admin, "IOTGW_COAP_UDP=off", "IOTGW_LOG_LEVEL=error")
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

// startMochi runs this program as a bare mochi broker in a child process.
func startMochi() (*broker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve-mochi")
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
func runMochi() error {
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := s.AddListener(listeners.NewNet("footprint", l)); err != nil {
		return err
	}
	if err := s.Serve(); err != nil {
		return err
	}
	// Not s.Close: the process exits when stdin closes.
	fmt.Println(l.Addr().String())
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
func runDialer(addr string, n, offset int, ping bool) error {
	raiseNoFile()
	conns := make([]net.Conn, n)
	next := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := dialIdle(addr, offset+i, ping)
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
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// dialIdle opens one connection as an idle device leaves it. Source
// addresses rotate over 127.0.0.0/8 so that loopback's ephemeral ports do
// not run out across runs (closed connections sit in TIME_WAIT).
func dialIdle(addr string, i int, ping bool) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 1, byte(i/2000), 1)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	// MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, empty client id
	// (the broker assigns one).
	connect := []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0}
	if err := exchange(c, connect, []byte{0x20, 0x02, 0x00, 0x00}); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	if ping {
		if err := exchange(c, []byte{0xc0, 0x00}, []byte{0xd0, 0x00}); err != nil {
			c.Close()
			return nil, fmt.Errorf("ping: %w", err)
		}
	}
	return c, nil
}

// exchange writes req and expects exactly want back.
func exchange(c net.Conn, req, want []byte) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(req); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
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
