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

// startKafkaCluster brings up instance name with nodes nodes, every topic
// replicated to 3 of them with min.insync.replicas 2; it is removed when
// the test ends.
func startKafkaCluster(t *testing.T, name string, port, nodes int) *kafkaCluster {
	t.Helper()
	k := startKafkaInstance(t, name, port, "KAFKA_NODES="+strconv.Itoa(nodes))
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

// partitionLeaders counts the partitions of topics each broker leads,
// asking any broker that answers. A topic that does not exist yet is an
// error.
func partitionLeaders(ctx context.Context, brokers []string, topics []string) (map[int]int, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 3 * time.Second, Transport: &kafka.Transport{}}
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return nil, err
	}
	leaders := map[int]int{}
	for _, tp := range md.Topics {
		if tp.Error != nil {
			return nil, fmt.Errorf("topic %s: %w", tp.Name, tp.Error)
		}
		for _, p := range tp.Partitions {
			leaders[p.Leader.ID]++
		}
	}
	return leaders, nil
}

// clusterConfig is baseConfig for a cluster: every broker as bootstrap,
// topics created with 3 replicas and min.insync.replicas 2.
func clusterConfig(brokers []string, bufferDir, prefix string) string {
	return fmt.Sprintf(`
gateway:
  id: e2e-gw
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
    replication_factor: 3
    min_insync_replicas: 2
`, strings.Join(brokers, ", "), bufferDir, prefix)
}

// egressSample is one look at the gateway's /status.
type egressSample struct {
	At     time.Time
	Buffer struct {
		Records int64 `json:"records"`
	} `json:"buffer"`
	Egress struct {
		Delivered   uint64
		DeadLetters uint64
		Dropped     uint64
		Retries     uint64
		LastAck     time.Time
		LastError   string
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
	Failures       uint64        // write retries between the kill and the restart
	FirstFailure   time.Duration // kill -> first failed write seen
	Recovered      time.Duration // kill -> first full Kafka ack after the last failed write
	BacklogPeak    int64         // most records in the buffer after the kill
	BacklogBefore  int64         // most records in the buffer before the kill
	BacklogCleared time.Duration // kill -> buffer back at or under BacklogBefore after the peak
}

func measureOutage(samples []egressSample, killAt, restartAt time.Time) outage {
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
		if s.At.After(restartAt) {
			continue
		}
		if s.Egress.Retries > prev {
			if o.FirstFailure == 0 {
				o.FirstFailure = s.At.Sub(killAt)
			}
			lastFailure = s.At
			prev = s.Egress.Retries
		}
	}
	o.Failures = prev - retriesAtKill
	for _, s := range samples {
		if !lastFailure.IsZero() && o.Recovered == 0 && s.Egress.LastAck.After(lastFailure) {
			o.Recovered = s.Egress.LastAck.Sub(killAt)
		}
		if s.At.After(peakAt) && o.BacklogCleared == 0 && s.Buffer.Records <= o.BacklogBefore {
			o.BacklogCleared = s.At.Sub(killAt)
		}
	}
	return o
}

// TestFaultClusterBrokerKilled runs the gateway against a three-broker
// KRaft cluster (replication 3, min.insync.replicas 2) and SIGKILLs the
// broker that leads the most partitions while 20 trucks publish QoS 1,
// starts it again later on its data, and keeps the load going throughout.
// Every message a device was told was received must reach Kafka, in order
// per device; duplicates (writes Kafka stored but whose answer died with
// the broker) are allowed and reported.
func TestFaultClusterBrokerKilled(t *testing.T) {
	const (
		loadFor   = 36 * time.Second
		killAfter = 12 * time.Second // into the load
		downFor   = 10 * time.Second // then the node is started again
	)
	cluster := startKafkaCluster(t, "fault-cluster", clusterBrokerPort, 3)
	prefix := uniqueTopicPrefix(t)
	topics := simTopics(prefix)
	gw := startGateway(t, clusterConfig(cluster.Brokers, t.TempDir(), prefix), "IOTGW_LOG_LEVEL=info")

	sctx, stopSampling := context.WithCancel(context.Background())
	defer stopSampling()
	samples := sampleEgress(sctx, gw, 100*time.Millisecond)

	type runResult struct {
		rep *simulator.Report
		err error
	}
	runc := make(chan runResult, 1)
	start := time.Now()
	go func() {
		rep, err := simulator.Run(context.Background(), simulator.Options{
			Broker: gw.MQTT, Trucks: 20, Rate: 25, Duration: loadFor, Protocol: "3.1.1",
			QoS: simulator.QoS(1), InFlight: 20, Seed: 5,
			ReconnectMin: 20 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
			AckTimeout: 5 * time.Second, DrainTimeout: 10 * time.Second,
		})
		runc <- runResult{rep, err}
	}()

	time.Sleep(time.Until(start.Add(killAfter)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	leaders, err := partitionLeaders(ctx, cluster.Brokers, topics)
	cancel()
	if err != nil {
		t.Fatalf("partition leaders %s after %s of load: %v\ngateway log:\n%s", topics, killAfter, err, tail(gw.Logs(), 30))
	}
	victim := 1
	for id := 2; id <= len(cluster.Brokers); id++ {
		if leaders[id] > leaders[victim] {
			victim = id
		}
	}
	killAt := time.Now()
	cluster.KillNode(victim)
	t.Logf("SIGKILLed broker %d at %s into the load; partition leaders before: %v", victim, killAt.Sub(start).Round(time.Millisecond), leaders)

	// Kafka moves leadership once the controller fences the dead broker
	// (broker.session.timeout.ms, 9 s by default).
	survivors := slices.Delete(slices.Clone(cluster.Brokers), victim-1, victim)
	var moved time.Duration
	for moved == 0 && time.Since(killAt) < downFor {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		l, err := partitionLeaders(ctx, survivors, topics)
		cancel()
		if err == nil && l[victim] == 0 {
			moved = time.Since(killAt)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Until(killAt.Add(downFor)))
	restartAt := time.Now()
	cluster.StartNode(victim)
	t.Logf("broker %d started again on its data: %s after the kill, serving %s later",
		victim, restartAt.Sub(killAt).Round(time.Millisecond), time.Since(restartAt).Round(time.Millisecond))

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
	o := measureOutage(samples(), killAt, restartAt)
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
	moveNote := "not within " + downFor.String()
	if moved > 0 {
		moveNote = moved.Round(100 * time.Millisecond).String()
	}
	t.Logf("broker %d of 3 SIGKILLed under load: sent %d, acked %d, retries %d, reconnects %d\n"+
		"kafka: leaders off broker %d after %s\n"+
		"gateway: %d failed writes, first %s after the kill; full acks again %s after the kill; "+
		"buffer peak %d records (before %d), back %s after the kill; drained %s after the load ended; "+
		"dead letters %d, dropped %d\n%s",
		victim, rep.Sent, rep.Acked, rep.Retries, rep.Connects,
		victim, moveNote,
		o.Failures, o.FirstFailure.Round(100*time.Millisecond), o.Recovered.Round(100*time.Millisecond),
		o.BacklogPeak, o.BacklogBefore, o.BacklogCleared.Round(100*time.Millisecond), drainedAt.Sub(start.Add(loadFor)).Round(100*time.Millisecond),
		st.Egress.DeadLetters, st.Egress.Dropped, sb.String())

	if res.Missing != 0 || res.OutOfOrder != 0 || !res.OK() {
		t.Fatalf("acknowledged messages lost or reordered:\n%s\ngateway log:\n%s", sb.String(), tail(gw.Logs(), 40))
	}
	if st.Egress.DeadLetters != 0 || st.Egress.Dropped != 0 {
		t.Errorf("%d records went to the dead-letter topic and %d were dropped during the broker failure\ngateway log:\n%s",
			st.Egress.DeadLetters, st.Egress.Dropped, tail(gw.Logs(), 40))
	}
	if o.Failures == 0 {
		t.Errorf("no Kafka write failed after broker %d was killed: the fault did not reach the gateway", victim)
	}
}
