package simulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// runEnv is what every device of a run shares.
type runEnv struct {
	opts    Options // defaulted and validated
	version byte
	qos     byte
	tls     *tls.Config // nil without TLS
	runID   string
	stats   *stats
	log     *slog.Logger
	warned  atomic.Bool
}

// warnOnce logs the first device failure of a run at Warn, so a broker
// that refuses everyone shows up in the log without thousands of lines.
func (e *runEnv) warnOnce(msg string, args ...any) {
	if e.warned.CompareAndSwap(false, true) {
		e.log.Warn(msg, args...)
	}
}

// Run simulates the fleet: it connects every device (spread over ramp_up),
// sends paced messages until duration or messages is reached or ctx is
// done, then gives each device up to drain_timeout to collect outstanding
// acks, disconnects, and returns the report. Device failures (refused
// connections, lost connections, timeouts) are counted in the report, not
// returned; the error is for options that cannot work (invalid values, an
// unreadable CA or route file). Ending through ctx is a normal way to stop
// an unlimited run and returns the report with a nil error.
func Run(ctx context.Context, opts Options) (*Report, error) {
	o := opts.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	roads, err := loadRoutes(o.RoutesFile)
	if err != nil {
		return nil, err
	}
	env := &runEnv{opts: o, qos: o.qos(), stats: &stats{}, log: o.logger().With("component", "simulator")}
	env.version, _ = o.mqttVersion()
	if o.TLS {
		if env.tls, err = o.tlsConfig(); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	env.runID = o.RunID
	if env.runID == "" {
		env.runID = start.UTC().Format("20060102T150405.000Z")
	}
	devs := buildFleet(o, roads)
	rep := &Report{
		RunID:    env.runID,
		Start:    start,
		Trucks:   o.Trucks,
		Sensors:  o.Sensors,
		Protocol: o.Protocol,
		QoS:      int(env.qos),
		CoAPType: o.CoAPType,
		Devices:  make(map[string]*DeviceResult, len(devs)),
	}
	env.log.Info("simulation starting", "run", env.runID, "trucks", o.Trucks, "sensors", o.Sensors,
		"broker", o.Broker, "coap", o.CoAP, "rate", o.Rate, "qos", env.qos, "protocol", o.Protocol)

	send, cancelSend := context.WithCancel(ctx)
	if o.Duration > 0 {
		send, cancelSend = context.WithTimeout(ctx, o.Duration)
	}
	defer cancelSend()

	progressCtx, stopProgress := context.WithCancel(context.Background())
	var progress sync.WaitGroup
	if o.Progress != nil {
		progress.Go(func() { env.stats.progress(progressCtx, o.Progress, start, len(devs)) })
	}

	var wg sync.WaitGroup
	mqttDevs := make([]*mqttDevice, 0, o.Trucks)
	coapDevs := make([]*coapDevice, 0, o.Sensors)
	for i := range devs {
		d := &devs[i]
		res := &DeviceResult{}
		rep.Devices[d.ID] = res
		var runDevice func(context.Context)
		if d.Kind == KindTruck {
			md := newMQTTDevice(env, d, res)
			mqttDevs = append(mqttDevs, md)
			runDevice = md.run
		} else {
			cd := newCoAPDevice(env, d, res)
			coapDevs = append(coapDevs, cd)
			runDevice = cd.run
		}
		delay := time.Duration(0)
		if len(devs) > 1 {
			delay = o.RampUp * time.Duration(i) / time.Duration(len(devs))
		}
		wg.Go(func() {
			if sleep(send, delay) {
				runDevice(send)
			}
		})
	}
	wg.Wait()
	stopProgress()
	progress.Wait()

	rep.Elapsed = time.Since(start)
	st := env.stats
	rep.Sent, rep.Acked, rep.Refused = st.sent.Load(), st.acked.Load(), st.refused.Load()
	rep.Errors, rep.Retries, rep.Connects = st.errors.Load(), st.retries.Load(), st.connects.Load()
	for _, d := range mqttDevs {
		d.mu.Lock()
		for p := range d.inflight.all() {
			if !p.released { // released QoS 2 publishes were acked by PUBREC
				rep.Unacked++
			}
		}
		d.mu.Unlock()
	}
	for _, d := range coapDevs {
		rep.Unacked += int64(d.unacked)
	}
	for _, r := range rep.Devices {
		r.LastAcked = r.Acked.Max()
	}
	if secs := rep.Elapsed.Seconds(); secs > 0 {
		rep.Throughput = float64(rep.Acked) / secs
		rep.SendRate = float64(rep.Sent) / secs
	}
	h := &st.latency
	rep.LatencyP50, rep.LatencyP99, rep.LatencyP999 = h.Quantile(0.50), h.Quantile(0.99), h.Quantile(0.999)
	rep.LatencyMax = h.Max()
	env.log.Info("simulation done", "run", env.runID, "sent", rep.Sent, "acked", rep.Acked,
		"refused", rep.Refused, "errors", rep.Errors, "retries", rep.Retries, "elapsed", rep.Elapsed)
	return rep, nil
}

// tlsConfig builds the client TLS configuration from the options.
func (o Options) tlsConfig() (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(o.Broker)
	cfg := &tls.Config{ServerName: host, InsecureSkipVerify: o.Insecure, MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// simSecondsPerMessage is how far device physics advance per message.
func simSecondsPerMessage(rate, timeScale float64) float64 {
	if rate <= 0 {
		return timeScale
	}
	return timeScale / rate
}

// pacer spaces a device's messages at its rate, with jitter. A device that
// falls behind (acks were slow) catches up by at most one second's worth
// of messages rather than bursting.
type pacer struct {
	interval float64 // seconds; 0 sends as fast as possible
	jitter   float64
	rng      *rand.Rand
	next     time.Time
}

func newPacer(rate, jitter float64, rng *rand.Rand) pacer {
	p := pacer{jitter: jitter, rng: rng}
	if rate > 0 {
		p.interval = 1 / rate
	}
	return p
}

func (p *pacer) start(now time.Time) { p.next = now }

// wait is how long until the next message is due; <= 0 means now.
func (p *pacer) wait(now time.Time) time.Duration {
	if p.interval == 0 {
		return 0
	}
	return p.next.Sub(now)
}

// advance schedules the message after one sent at now.
func (p *pacer) advance(now time.Time) {
	if p.interval == 0 {
		return
	}
	iv := p.interval * (1 + p.jitter*(2*p.rng.Float64()-1))
	p.next = p.next.Add(time.Duration(iv * float64(time.Second)))
	if now.Sub(p.next) > time.Second {
		p.next = now.Add(-time.Second)
	}
}

// backoff is the wait before reconnect attempt n (0-based): min doubling up
// to max, drawn uniformly from its upper half so devices that dropped
// together do not come back together.
func backoff(n int, lo, hi time.Duration, rng *rand.Rand) time.Duration {
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(rng.Int64N(int64(d/2)+1))
}

// sleep waits d or until ctx is done; it reports whether the full wait
// passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// drainContext returns the context a device lives in: it outlives send by
// drain (so outstanding acks can arrive after sending stopped) and ends
// drain after startDrain is first called or send is done. stop releases
// its resources.
func drainContext(send context.Context, drain time.Duration) (life context.Context, startDrain, stop func()) {
	life, cancel := context.WithCancel(context.WithoutCancel(send))
	var once sync.Once
	var timer *time.Timer
	startDrain = func() { once.Do(func() { timer = time.AfterFunc(drain, cancel) }) }
	stopAfter := context.AfterFunc(send, startDrain)
	stop = func() {
		stopAfter()
		once.Do(func() {}) // waits for a startDrain in progress
		if timer != nil {
			timer.Stop()
		}
		cancel()
	}
	return life, startDrain, stop
}
