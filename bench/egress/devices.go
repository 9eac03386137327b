package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iotgw/iotgw/simulator"
)

// The simulated devices run in a child process (this binary again, with
// -simulate), as real devices are not in the gateway's process: the
// gateway's garbage collector and scheduler do not carry the simulator's
// work, and the CPU each side uses is measured apart. -sim-in-process puts
// them back in this process.

// simulateFlag is the hidden flag that makes this binary a simulator child:
// its value is the simulator.Options as JSON; the child prints the Report as
// JSON on stdout.
const simulateFlag = "-simulate"

// childMain runs the simulator for a parent and reports if args ask for it.
func childMain(args []string) bool {
	if len(args) != 2 || args[0] != simulateFlag {
		return false
	}
	var so simulator.Options
	if err := json.Unmarshal([]byte(args[1]), &so); err != nil {
		fmt.Fprintln(os.Stderr, "bench/egress -simulate:", err)
		os.Exit(2)
	}
	rep, err := simulator.Run(context.Background(), so)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/egress -simulate:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// simProcess is where the simulated devices run: in this process, or in a
// child process at a nice value.
//
// The latency runs start the child at nice 19 (-latency-sim-nice). On this
// 2-core machine the devices, the gateway and the broker share the CPUs;
// paced at 1000 msg/s each, the devices' process used 0.4 of a core (a
// loopback TCP write per message costs the sender the receiver's kernel
// work too), and at the same priority the kernel let the gateway's threads
// wait for a CPU as long as they ran. At nice 19 the gateway and the
// broker run first when they have work, as they would with the devices on
// other machines. The acked rate in the report shows whether the devices
// kept their pace. The throughput runs keep the same priority: there the
// devices must keep the gateway saturated.
type simProcess struct {
	inProcess bool
	nice      int // the child's nice value; 0 for the caller's
}

// simulate runs the simulated devices where p says and returns their
// report and the CPU time they used (zero in process: there it is part of
// the gateway's).
func simulate(ctx context.Context, p simProcess, so simulator.Options) (*simulator.Report, time.Duration, error) {
	if p.inProcess {
		rep, err := simulator.Run(ctx, so)
		return rep, 0, err
	}
	opts, err := json.Marshal(so)
	if err != nil {
		return nil, 0, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.CommandContext(ctx, exe, simulateFlag, string(opts))
	if p.nice != 0 {
		cmd = exec.CommandContext(ctx, "nice", "-n", strconv.Itoa(p.nice), exe, simulateFlag, string(opts))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, 0, fmt.Errorf("simulator process: %w", err)
	}
	var rep simulator.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return nil, 0, fmt.Errorf("simulator process report: %w", err)
	}
	return &rep, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// cpuSample is the CPU time used so far by this process and by the Kafka
// brokers on this machine.
// cpuSample is this process's and the brokers' CPU time so far, with
// this process's heap allocation and garbage collections.
type cpuSample struct {
	self, broker time.Duration
	selfSys      time.Duration // the system (kernel) part of self
	allocBytes   uint64
	gcs          uint64
}

func sampleCPU() cpuSample {
	var ru syscall.Rusage
	var s cpuSample
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		s.selfSys = time.Duration(ru.Stime.Nano())
	}
	s.broker = brokerCPU()
	m := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	rtmetrics.Read(m)
	s.allocBytes, s.gcs = m[0].Value.Uint64(), m[1].Value.Uint64()
	return s
}

func (s cpuSample) minus(o cpuSample) cpuSample {
	return cpuSample{self: s.self - o.self, selfSys: s.selfSys - o.selfSys, broker: s.broker - o.broker, allocBytes: s.allocBytes - o.allocBytes, gcs: s.gcs - o.gcs}
}

// clockTick is the unit of /proc/PID/stat's times: USER_HZ, 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// brokerCPU sums the user and system time of the processes running
// kafka.Kafka (the harness's brokers), from /proc; 0 where there is none.
func brokerCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var total time.Duration
	for _, stat := range stats {
		dir := filepath.Dir(stat)
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("\x00kafka.Kafka\x00")) {
			continue
		}
		b, err := os.ReadFile(stat)
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state is field
		// 3, utime 14, stime 15.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * clockTick
	}
	return total
}

// machineIdle is the time the machine's CPUs spent idle so far (idle and
// iowait in /proc/stat, summed over CPUs); 0 where it cannot be read.
func machineIdle() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line)) // cpu user nice system idle iowait ...
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	idle, _ := strconv.ParseInt(f[4], 10, 64)
	iowait, _ := strconv.ParseInt(f[5], 10, 64)
	return time.Duration(idle+iowait) * clockTick
}

// perRecord is CPU time per record in microseconds.
func perRecord(d time.Duration, n int64) float64 {
	if n == 0 {
		return 0
	}
	return float64(d) / float64(time.Microsecond) / float64(n)
}
