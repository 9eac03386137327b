// Command footprint measures the gateway's edge footprint: the size of the
// static binary, the time from exec to the MQTT listener accepting, the
// idle RSS, and the RSS with many idle MQTT connections.
//
//	go run ./bench/footprint [-conns 10000]
//
// Kafka is not needed: the gateway starts and buffers without it.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	conns := flag.Int("conns", 10000, "idle MQTT connections to hold open")
	flag.Parse()
	if err := run(*conns); err != nil {
		fmt.Fprintln(os.Stderr, "bench/footprint:", err)
		os.Exit(1)
	}
}

func run(nconns int) error {
	raiseNoFile(uint64(nconns*2 + 1024))
	dir, err := os.MkdirTemp("", "iotgw-footprint")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "iotgw")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/iotgw")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	st, err := os.Stat(bin)
	if err != nil {
		return err
	}
	port := freePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(),
		"IOTGW_KAFKA_BROKERS=127.0.0.1:1", "IOTGW_BUFFER_DIR="+filepath.Join(dir, "buf"), "IOTGW_AUTH_MODE=open",
		"IOTGW_MQTT_TCP="+addr, "IOTGW_HTTP_LISTEN=off", "IOTGW_COAP_UDP=off", "IOTGW_LOG_LEVEL=error")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 20*time.Second {
			return fmt.Errorf("not listening after 20s: %s", stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
	startup := time.Since(start)
	time.Sleep(2 * time.Second)
	idle := rss(cmd.Process.Pid)

	connect := []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0} // MQTT 3.1.1 CONNECT, clean, empty client id
	var held []net.Conn
	for i := 0; i < nconns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if _, err := c.Write(connect); err != nil {
			return err
		}
		held = append(held, c)
		if i%500 == 499 {
			// Read the CONNACKs so the server's writes do not pile up.
			for _, h := range held[i-499 : i+1] {
				h.SetReadDeadline(time.Now().Add(10 * time.Second))
				var b [4]byte
				if _, err := h.Read(b[:]); err != nil {
					return fmt.Errorf("connack: %w", err)
				}
			}
		}
	}
	time.Sleep(3 * time.Second)
	loaded := rss(cmd.Process.Pid)
	for _, c := range held {
		c.Close()
	}
	perConn := float64(loaded-idle) / float64(nconns)

	fmt.Printf("## Edge footprint\n\n`go run ./bench/footprint -conns %d` (linux/amd64, CGO_ENABLED=0, -ldflags '-s -w')\n\n", nconns)
	fmt.Printf("| measure | value | target |\n|---|---|---|\n")
	fmt.Printf("| binary size | %.1f MiB | |\n", float64(st.Size())/(1<<20))
	fmt.Printf("| exec to MQTT listening | %s | |\n", startup.Round(time.Millisecond))
	fmt.Printf("| idle RSS | %.1f MiB | |\n", float64(idle)/(1<<20))
	fmt.Printf("| RSS with %d idle MQTT connections | %.1f MiB | |\n", nconns, float64(loaded)/(1<<20))
	fmt.Printf("| **RSS per idle connection** | **%.1f KiB** | ≤ 20 KiB |\n", perConn/1024)
	fmt.Printf("\nRESULT footprint_kib_per_conn %.2f 20\nRESULT footprint_binary_mib %.2f 0\nRESULT footprint_idle_rss_mib %.2f 0\nRESULT footprint_startup_ms %d 0\n",
		perConn/1024, float64(st.Size())/(1<<20), float64(idle)/(1<<20), startup.Milliseconds())
	return nil
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

func raiseNoFile(n uint64) {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < n {
		l.Cur = min(n, l.Max)
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 21883
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
