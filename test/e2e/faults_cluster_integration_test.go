//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/iotgw/iotgw/simulator"
)

// clusterBrokerPort is node 1 of the fault test's own three-node cluster;
// kafka.sh puts node I on clusterBrokerPort+10*(I-1) and each controller
// one port above its broker: 19492-19493, 19502-19503, 19512-19513.
const clusterBrokerPort = 19492

// kafkaCluster is a three-node KRaft cluster of the test harness
// (scripts/kafka.sh with KAFKA_NODES=3) started for one test.
type kafkaCluster struct {
	*kafkaInstance
	Brokers []string // node I's PLAINTEXT address is Brokers[I-1]
}

// startKafkaCluster brings up instance name as a cluster of n nodes (with
// three: every topic replicated to all of them, min.insync.replicas 2); it
// is removed when the test ends.
func startKafkaCluster(t *testing.T, name string, port, n int) *kafkaCluster {
	t.Helper()
	k := startKafkaInstance(t, name, port, "KAFKA_NODES="+strconv.Itoa(n))
	out, err := k.run("bootstrap")
	if err != nil {
		t.Fatalf("kafka.sh bootstrap: %v\n%s", err, out)
	}
	return &kafkaCluster{kafkaInstance: k, Brokers: strings.Split(strings.TrimSpace(out), ",")}
}

// KillNode SIGKILLs node n (a broker crash) and keeps its data.
func (c *kafkaCluster) KillNode(n int) {
	c.t.Helper()
	if out, err := c.run("kill-node", strconv.Itoa(n)); err != nil {
		c.t.Fatalf("kafka.sh kill-node %d: %v\n%s", n, err, out)
	}
}

// StartNode starts node n again on its data and waits until it serves.
func (c *kafkaCluster) StartNode(n int) {
	c.t.Helper()
	if out, err := c.run("start-node", strconv.Itoa(n)); err != nil {
		c.t.Fatalf("kafka.sh start-node %d: %v\n%s", n, err, out)
	}
}

// QuorumLeader is the node that is the active KRaft controller now.
func (c *kafkaCluster) QuorumLeader() int {
	c.t.Helper()
	out, err := c.run("quorum")
	if err == nil {
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "LeaderId:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					return id
				}
			}
		}
	}
	c.t.Fatalf("kafka.sh quorum: no LeaderId: %v\n%s", err, out)
	return 0
}

// partitionLayout is where the partitions of some topics are.
type partitionLayout struct {
	Leaders     map[int]int // partitions each broker leads
	MinReplicas int         // the fewest replicas a partition has
	MinISR      int         // the fewest in-sync replicas a partition has
}

// describePartitions asks any broker that answers where the partitions of
// topics are. A topic that does not exist is an error.
func describePartitions(ctx context.Context, brokers []string, topics []string) (partitionLayout, error) {
	l := partitionLayout{Leaders: map[int]int{}, MinReplicas: -1, MinISR: -1}
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 3 * time.Second, Transport: &kafka.Transport{}}
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return l, err
	}
	for _, tp := range md.Topics {
		if tp.Error != nil {
			return l, fmt.Errorf("topic %s: %w", tp.Name, tp.Error)
		}
		for _, p := range tp.Partitions {
			l.Leaders[p.Leader.ID]++
			if l.MinReplicas < 0 || len(p.Replicas) < l.MinReplicas {
				l.MinReplicas = len(p.Replicas)
			}
			if l.MinISR < 0 || len(p.Isr) < l.MinISR {
				l.MinISR = len(p.Isr)
			}
		}
	}
	return l, nil
}

// waitPartitions polls describePartitions until cond holds or timeout
// passes, and returns how long that took and whether it held.
func waitPartitions(brokers, topics []string, timeout time.Duration, cond func(partitionLayout) bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		l, err := describePartitions(ctx, brokers, topics)
		cancel()
		if err == nil && cond(l) {
			return time.Since(start), true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return timeout, false
}

// within formats how long waitPartitions took.
func within(d time.Duration, ok bool) string {
	if !ok {
		return "not within " + d.String()
	}
	return d.Round(100 * time.Millisecond).String()
}

// clusterConfig is baseConfig for a cluster: every broker as bootstrap and
// one static route per simulator stream, so the gateway creates every topic
// at start, with 3 replicas and min.insync.replicas 2. (A topic first
// needed while a broker is down cannot be created with 3 replicas until
// it is back, which would stall delivery for reasons other than the
// failure under test.)
func clusterConfig(brokers []string, bufferDir, prefix string) string {
	var routes strings.Builder
	for _, stream := range []string{simulator.StreamPosition, simulator.StreamEngine, simulator.StreamEvents} {
		fmt.Fprintf(&routes, `
  - match: devices/{device}/%s
    topic: %s.%s
    replication_factor: 3
    min_insync_replicas: 2`, stream, prefix, stream)
	}
	return fmt.Sprintf(`
gateway:
  id: e2e-gw
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
routes:%s
`, strings.Join(brokers, ", "), bufferDir, routes.String())
}

// egressSample is one look at the gateway's /status.
type egressSample struct {
	At     time.Time
	Buffer struct {
		Records int64 `json:"records"`
	} `json:"buffer"`
	Egress struct {
		Delivered   uint64    `json:"delivered"`
		DeadLetters uint64    `json:"dead_letters"`
		Retries     uint64    `json:"retries"`
		KafkaUp     bool      `json:"kafka_up"`
		LastAck     time.Time `json:"last_ack"`
		LastError   string    `json:"last_error"`
	} `json:"egress"`
}

func (g *gatewayProc) sample() (egressSample, error) {
	var s egressSample
	resp, err := http.Get("http://" + g.HTTP + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	s.At = time.Now()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// sampleEgress polls /status every interval until ctx ends and returns the
// samples in order.
func sampleEgress(ctx context.Context, gw *gatewayProc, interval time.Duration) func() []egressSample {
	var mu sync.Mutex
	var out []egressSample
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if s, err := gw.sample(); err == nil {
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() []egressSample {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return out
	}
}

// outage is how the gateway's delivery went through one broker failure,
// read from /status samples.
type outage struct {
	Failures       uint64        // failed writes (retries) after the kill
	FirstFailure   time.Duration // kill -> first failed write seen
	Recovered      time.Duration // kill -> first full Kafka ack after the last failed write
	BacklogPeak    int64         // most records in the buffer after the kill
	BacklogBefore  int64         // most records in the buffer before the kill
	BacklogCleared time.Duration // kill -> buffer back at or under BacklogBefore after the peak
	Timeline       []string      // each failed write seen (time after the kill, last error) and the recovery
}

func measureOutage(samples []egressSample, killAt time.Time) outage {
	var o outage
	var retriesAtKill uint64
	var lastFailure time.Time
	for _, s := range samples {
		if s.At.Before(killAt) {
			retriesAtKill = s.Egress.Retries
			o.BacklogBefore = max(o.BacklogBefore, s.Buffer.Records)
		}
	}
	peakAt := killAt
	prev := retriesAtKill
	for _, s := range samples {
		if s.At.Before(killAt) {
			continue
		}
		if s.Buffer.Records > o.BacklogPeak {
			o.BacklogPeak, peakAt = s.Buffer.Records, s.At
		}
		if s.Egress.Retries > prev {
			if o.FirstFailure == 0 {
				o.FirstFailure = s.At.Sub(killAt)
			}
			lastFailure = s.At
			o.Timeline = append(o.Timeline, fmt.Sprintf("+%s: %d failed writes: %s",
				s.At.Sub(killAt).Round(100*time.Millisecond), s.Egress.Retries-retriesAtKill, s.Egress.LastError))
			prev = s.Egress.Retries
		}
	}
	o.Failures = prev - retriesAtKill
	for _, s := range samples {
		if !lastFailure.IsZero() && o.Recovered == 0 && s.Egress.LastAck.After(lastFailure) {
			o.Recovered = s.Egress.LastAck.Sub(killAt)
			o.Timeline = append(o.Timeline, fmt.Sprintf("+%s: Kafka acknowledged a whole batch again", o.Recovered.Round(100*time.Millisecond)))
		}
		if s.At.After(peakAt) && o.BacklogCleared == 0 && s.Buffer.Records <= o.BacklogBefore {
			o.BacklogCleared = s.At.Sub(killAt)
		}
	}
	return o
}

// logLevels is the first n lines of log that contain one of levels.
func logLevels(log string, n int, levels ...string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if len(out) == n {
			out = append(out, "...")
			break
		}
		for _, l := range levels {
			if strings.Contains(line, l) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestFaultClusterBrokerKilled runs the gateway against a three-broker
// KRaft cluster (replication 3, min.insync.replicas 2) and SIGKILLs the
// broker that leads the most partitions (of equals, the active controller:
// the worst case, two failovers at once) while 20 trucks publish QoS 1,
// starts it again later on its data, and keeps the load going throughout.
// Every message a device was told was received must reach Kafka, in order
// per device; duplicates (writes Kafka stored but whose answer died with
// the broker) are allowed and reported.
func TestFaultClusterBrokerKilled(t *testing.T) {
	const (
		loadFor   = 45 * time.Second
		killAfter = 10 * time.Second // into the load
		// The node is started again once the gateway delivers without it,
		// but not before minDown nor later than maxDown after the kill.
		minDown = 12 * time.Second
		maxDown = 30 * time.Second
	)
	cluster := startKafkaCluster(t, "fault-cluster", clusterBrokerPort, 3)
	prefix := uniqueTopicPrefix(t)
	topics := simTopics(prefix)
	gw := startGateway(t, clusterConfig(cluster.Brokers, t.TempDir(), prefix), "IOTGW_LOG_LEVEL=info")
	for _, topic := range topics {
		parts, cfg := topicConfig(t, cluster.Brokers[0], topic, "min.insync.replicas")
		if parts != 3 || cfg["min.insync.replicas"] != "2" {
			t.Fatalf("topic %s: %d partitions, min.insync.replicas %q; want 3 and 2", topic, parts, cfg["min.insync.replicas"])
		}
	}

	controller := cluster.QuorumLeader()

	sctx, stopSampling := context.WithCancel(context.Background())
	defer stopSampling()
	samples := sampleEgress(sctx, gw, 100*time.Millisecond)

	type runResult struct {
		rep *simulator.Report
		err error
	}
	runc := make(chan runResult, 1)
	simCtx, stopSim := context.WithCancel(context.Background())
	defer stopSim() // a test that fails early does not leave the fleet running
	start := time.Now()
	go func() {
		rep, err := simulator.Run(simCtx, simulator.Options{
			Broker: gw.MQTT, Trucks: 20, Rate: 25, Duration: loadFor, Protocol: "3.1.1",
			QoS: simulator.QoS(1), InFlight: 20, Seed: 5,
			ReconnectMin: 20 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
			AckTimeout: 5 * time.Second, DrainTimeout: 10 * time.Second,
		})
		runc <- runResult{rep, err}
	}()

	time.Sleep(time.Until(start.Add(killAfter)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	layout, err := describePartitions(ctx, cluster.Brokers, topics)
	cancel()
	if err != nil || layout.MinReplicas != 3 || layout.MinISR != 3 {
		t.Fatalf("partitions of %s after %s of load: %v, %+v (want 3 replicas, all in sync)\ngateway log:\n%s", topics, killAfter, err, layout, tail(gw.Logs(), 30))
	}
	before, err := gw.sample()
	if err != nil {
		t.Fatalf("gateway /status: %v", err)
	}
	victim := controller
	for id := 1; id <= len(cluster.Brokers); id++ {
		if layout.Leaders[id] > layout.Leaders[victim] {
			victim = id
		}
	}
	killAt := time.Now()
	cluster.KillNode(victim)
	t.Logf("SIGKILLed broker %d at %s into the load; partitions led before: %v; active controller before: %d",
		victim, killAt.Sub(start).Round(time.Millisecond), layout.Leaders, controller)

	// Kafka moves leadership once the controller fences the dead broker
	// (broker.session.timeout.ms, 9 s by default).
	survivors := slices.Delete(slices.Clone(cluster.Brokers), victim-1, victim)
	moved, movedOK := waitPartitions(survivors, topics, maxDown, func(l partitionLayout) bool { return l.Leaders[victim] == 0 })
	for time.Since(killAt) < maxDown {
		// Delivering without the dead broker: a write failed since the kill
		// and the last one succeeded after the leaders moved.
		s, err := gw.sample()
		if err == nil && movedOK && s.Egress.Retries > before.Egress.Retries && s.Egress.KafkaUp && s.Egress.LastAck.After(killAt.Add(moved)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Until(killAt.Add(minDown)))
	restartAt := time.Now()
	cluster.StartNode(victim)
	servingAt := time.Now()
	inSync, inSyncOK := waitPartitions(cluster.Brokers, topics, 30*time.Second, func(l partitionLayout) bool { return l.MinISR == 3 })
	t.Logf("broker %d started again on its data %s after the kill; serving %s later; back in every ISR %s after that",
		victim, restartAt.Sub(killAt).Round(100*time.Millisecond), servingAt.Sub(restartAt).Round(100*time.Millisecond), within(inSync, inSyncOK))

	r := <-runc
	if r.err != nil {
		t.Fatal(r.err)
	}
	rep := r.rep
	if rep.Acked < 10000 {
		t.Fatalf("only %d messages acked: the load did not run (report %+v)", rep.Acked, rep)
	}
	waitDrained(t, gw, 60*time.Second)
	drainedAt := time.Now()
	stopSampling()
	o := measureOutage(samples(), killAt)
	st, err := gw.sample()
	if err != nil {
		t.Fatalf("gateway /status: %v", err)
	}

	res, err := simulator.Verify(context.Background(), simulator.VerifyOptions{
		Brokers: cluster.Brokers, Topics: topics, Report: rep, Timeout: 90 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	res.Print(&sb)
	t.Logf("broker %d of 3 SIGKILLed under load: sent %d, acked %d, MQTT resends %d, connects %d\n"+
		"kafka: leaders off broker %d %s after the kill\n"+
		"gateway: %d failed writes, first %s after the kill; full acks again %s after the kill; "+
		"buffer peak %d records (before %d), back %s after the kill; drained %s after the load ended; "+
		"dead letters %d\n%s",
		victim, rep.Sent, rep.Acked, rep.Retries, rep.Connects,
		victim, within(moved, movedOK),
		o.Failures, o.FirstFailure.Round(100*time.Millisecond), o.Recovered.Round(100*time.Millisecond),
		o.BacklogPeak, o.BacklogBefore, o.BacklogCleared.Round(100*time.Millisecond), drainedAt.Sub(start.Add(loadFor)).Round(100*time.Millisecond),
		st.Egress.DeadLetters, sb.String())

	t.Logf("gateway egress after the kill:\n  %s\ngateway warnings and errors:\n%s",
		strings.Join(o.Timeline, "\n  "), logLevels(gw.Logs(), 30, "level=WARN", "level=ERROR"))

	if res.Missing != 0 || res.OutOfOrder != 0 || !res.OK() {
		t.Fatalf("acknowledged messages lost or reordered:\n%s\ngateway log:\n%s", sb.String(), tail(gw.Logs(), 40))
	}
	if st.Egress.DeadLetters != 0 {
		t.Errorf("%d records went to the dead-letter topic during the broker failure\ngateway log:\n%s",
			st.Egress.DeadLetters, tail(gw.Logs(), 40))
	}
	if o.Failures == 0 {
		t.Errorf("no Kafka write failed after broker %d was killed: the fault did not reach the gateway", victim)
	}
}
