//go:build integration

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/simulator"
)

// ownBrokerPort is the PLAINTEXT port of the broker these tests start for
// themselves (its controller takes the next port).
const ownBrokerPort = 19192

// TestKafkaOwnBroker runs the gateway binary against a Kafka broker of its
// own that advertises a chaos proxy, so every connection the gateway makes
// goes through the proxy: the tests stop and restart the broker, and make it
// hang or vanish, without touching the shared broker.
func TestKafkaOwnBroker(t *testing.T) {
	kafkaAddr(t) // the harness is up (Verify-independent sanity)
	proxy := startChaosProxy(t, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", ownBrokerPort))
	_, proxyPort, _ := strings.Cut(proxy.Addr(), ":")
	k := startKafkaInstance(t, "egress-e2e", ownBrokerPort, "KAFKA_ADVERTISED_PORT="+proxyPort)

	t.Run("BrokerRestartKeepsOrder", func(t *testing.T) { testBrokerRestartKeepsOrder(t, k, proxy) })
	t.Run("OutageAndHangDrain", func(t *testing.T) { testOutageAndHangDrain(t, k, proxy) })
	t.Run("SinkSettlesAfterHang", func(t *testing.T) { testSinkSettlesAfterHang(t, proxy) })
}

// testSinkSettlesAfterHang: a Write that gives up (its context ends) while
// the broker hangs leaves its produce requests running; the sink must not
// say it is settled (the pipeline would reuse the messages' memory) until
// they are done, which kafka.write_timeout bounds.
func testSinkSettlesAfterHang(t *testing.T, proxy *chaosProxy) {
	topic := uniqueTopicPrefix(t) + ".settle"
	sink, ctx := newTopicSink(t, gateway.KafkaOptions{Brokers: []string{proxy.Addr()}, WriteTimeout: time.Second, DialTimeout: time.Second}, 100, topic)
	msgs := make([]gateway.Message, 30)
	for i := range msgs {
		msgs[i] = gateway.Message{Topic: topic, Key: []byte(fmt.Sprintf("d%d", i%7)), Value: []byte(fmt.Sprint(i))}
	}
	var werr error
	for i := 0; i < 50; i++ { // the first writes may meet a leader not yet elected
		if werr = sink.Write(ctx, msgs); werr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	if !sink.Settled() {
		t.Fatal("not settled after a Write that succeeded")
	}

	proxy.SetMode(proxyHang)
	defer proxy.SetMode(proxyForward)
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err := sink.Write(short, msgs)
	cancelShort()
	if err == nil {
		t.Fatal("a Write to a hanging broker succeeded")
	}
	if sink.Settled() {
		t.Fatalf("settled right after a Write that gave up (%v) with its batches queued", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !sink.Settled() {
		if time.Now().After(deadline) {
			t.Fatal("still not settled 10 s after the Write gave up; kafka.write_timeout is 1 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ownBrokerConfig(proxy *chaosProxy, bufferDir, prefix string) string {
	return fmt.Sprintf(`
gateway:
  id: e2e-own
kafka:
  brokers: [%s]
buffer:
  dir: %s
auth:
  mode: open
routes:
  - match: devices/{device}/{stream}
    topic: %s.{stream}
`, proxy.Addr(), bufferDir, prefix)
}

// testBrokerRestartKeepsOrder: 20 trucks publish QoS 1 for 30 s; the broker
// is stopped 8 s in and started again on its data 7 s later. Every
// acknowledged message must be in Kafka, in order per device and partition.
func testBrokerRestartKeepsOrder(t *testing.T, k *kafkaInstance, proxy *chaosProxy) {
	prefix := uniqueTopicPrefix(t)
	gw := startGateway(t, ownBrokerConfig(proxy, t.TempDir(), prefix), "IOTGW_LOG_LEVEL=warn")
	ctx := context.Background()

	type simResult struct {
		rep *simulator.Report
		err error
	}
	simDone := make(chan simResult, 1)
	go func() {
		rep, err := simulator.Run(ctx, simulator.Options{Broker: gw.MQTT, Trucks: 20, Rate: 50, Jitter: 0.3,
			Duration: 30 * time.Second, QoS: simulator.QoS(1), Seed: 11})
		simDone <- simResult{rep, err}
	}()
	time.Sleep(8 * time.Second)
	stopAt := time.Now()
	k.Stop()
	t.Logf("broker stopped (took %s)", time.Since(stopAt).Round(time.Millisecond))
	time.Sleep(time.Until(stopAt.Add(7 * time.Second)))
	startAt := time.Now()
	k.Start()
	t.Logf("broker back after %s down (start took %s)", time.Since(stopAt).Round(time.Millisecond), time.Since(startAt).Round(time.Millisecond))

	sr := <-simDone
	if sr.err != nil {
		t.Fatal(sr.err)
	}
	rep := sr.rep
	if rep.Acked < 10000 || rep.Refused > 0 {
		t.Fatalf("load did not run as planned: acked %d, refused %d", rep.Acked, rep.Refused)
	}
	kwaitFor(t, 90*time.Second, "the gateway to deliver its backlog", func() bool { return gw.egressStatus(t).Buffer.Records == 0 })

	res, err := simulator.Verify(ctx, simulator.VerifyOptions{Brokers: []string{k.Addr},
		Topics: []string{prefix + ".position", prefix + ".engine", prefix + ".events"}, Report: rep, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	res.Print(&sb)
	st := gw.egressStatus(t)
	t.Logf("broker restart under load: acked %d, kafka write retries %d\n%s", rep.Acked, st.Egress.Retries, sb.String())
	if st.Egress.Retries == 0 {
		t.Errorf("no write was retried: the broker restart did not hit egress")
	}
	if !res.OK() || res.Missing != 0 || res.OutOfOrder != 0 {
		t.Fatalf("acknowledged messages lost or reordered across the broker restart:\n%s\ngateway log:\n%s", sb.String(), ktail(gw.Logs(), 40))
	}
}

// testOutageAndHangDrain: 40 trucks publish 2000 msg/s QoS 1. 10 s in, the
// proxy hangs (accepts, answers nothing) for 30 s, then drops every
// connection for 30 s: a 60 s outage. Ingest must go on, egress must not
// wedge on the hang, memory must stay flat, and after recovery the backlog
// must drain at 3 times the ingest rate or more while ingest goes on, with
// no acknowledged message missing.
func testOutageAndHangDrain(t *testing.T, k *kafkaInstance, proxy *chaosProxy) {
	prefix := uniqueTopicPrefix(t)
	gw := startGateway(t, ownBrokerConfig(proxy, t.TempDir(), prefix), "IOTGW_LOG_LEVEL=warn")
	ctx := context.Background()

	const (
		warm    = 10 * time.Second
		hang    = 30 * time.Second
		down    = 30 * time.Second
		after   = 35 * time.Second
		trucks  = 40
		perSec  = 50.0
		ingestR = trucks * perSec
	)
	type simResult struct {
		rep *simulator.Report
		err error
	}
	simDone := make(chan simResult, 1)
	start := time.Now()
	go func() {
		rep, err := simulator.Run(ctx, simulator.Options{Broker: gw.MQTT, Trucks: trucks, Rate: perSec, Jitter: 0.3,
			Duration: warm + hang + down + after, QoS: simulator.QoS(1), Seed: 12})
		simDone <- simResult{rep, err}
	}()

	type sample struct {
		at        time.Time
		records   int64
		delivered uint64
		retries   uint64
		rss       int64
	}
	var samples []sample
	take := func() sample {
		st := gw.egressStatus(t)
		s := sample{at: time.Now(), records: st.Buffer.Records, delivered: st.Egress.Delivered, retries: st.Egress.Retries, rss: gw.processRSS(t)}
		samples = append(samples, s)
		return s
	}
	sampleUntil := func(end time.Time) {
		for time.Now().Before(end) {
			take()
			time.Sleep(250 * time.Millisecond)
		}
	}

	sampleUntil(start.Add(warm))
	proxy.SetMode(proxyHang)
	hangStart := take()
	sampleUntil(start.Add(warm + hang))
	proxy.SetMode(proxyDown)
	hangEnd := take()
	sampleUntil(start.Add(warm + hang + down))
	outageEnd := take()
	proxy.SetMode(proxyForward)
	recovered := outageEnd.at

	// Drained: the backlog is down to a second of ingest.
	var drained sample
	for {
		s := take()
		if s.records <= int64(ingestR) {
			drained = s
			break
		}
		if time.Since(recovered) > 90*time.Second {
			t.Fatalf("backlog not drained 90s after recovery: %d records left\n%s", s.records, ktail(gw.Logs(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	sr := <-simDone
	if sr.err != nil {
		t.Fatal(sr.err)
	}
	rep := sr.rep
	ingest := float64(rep.Acked) / rep.Elapsed.Seconds()
	drainSecs := drained.at.Sub(recovered).Seconds()
	drainRate := float64(drained.delivered-outageEnd.delivered) / drainSecs
	stillIngesting := drained.at.Before(start.Add(rep.Elapsed))

	// Memory during the outage: from 5 s into it to its end.
	var rssEarly, rssMax int64
	for _, s := range samples {
		if s.at.Before(hangStart.at.Add(5*time.Second)) || s.at.After(outageEnd.at) {
			continue
		}
		if rssEarly == 0 {
			rssEarly = s.rss
		}
		rssMax = max(rssMax, s.rss)
	}
	t.Logf("outage: ingest %.0f msg/s (acked %d), backlog at recovery %d records; drained in %.1fs at %.0f msg/s = %.1fx ingest (ingest still running: %v)",
		ingest, rep.Acked, outageEnd.records, drainSecs, drainRate, drainRate/ingest, stillIngesting)
	t.Logf("outage: write retries during the hang %d, during the whole outage %d; delivered during the outage %d; RSS 5s into the outage %.1f MiB, max until its end %.1f MiB",
		hangEnd.retries-hangStart.retries, outageEnd.retries-hangStart.retries, outageEnd.delivered-hangEnd.delivered,
		float64(rssEarly)/(1<<20), float64(rssMax)/(1<<20))

	if outageEnd.records < int64(ingestR*50) {
		t.Errorf("backlog at recovery only %d records: ingest did not go on during the outage", outageEnd.records)
	}
	if hangEnd.retries-hangStart.retries < 2 {
		t.Errorf("only %d failed writes during a %s hang: egress wedged on a broker that answers nothing", hangEnd.retries-hangStart.retries, hang)
	}
	if rssMax-rssEarly > 64<<20 {
		t.Errorf("RSS grew by %.1f MiB during the outage: memory is not flat", float64(rssMax-rssEarly)/(1<<20))
	}
	if !stillIngesting {
		t.Errorf("the backlog drained only after ingest stopped")
	}
	if drainRate < 3*ingest {
		t.Errorf("drain rate %.0f msg/s is %.1fx the ingest rate, want >= 3x", drainRate, drainRate/ingest)
	}

	kwaitFor(t, 60*time.Second, "the rest of the backlog", func() bool { return gw.egressStatus(t).Buffer.Records == 0 })
	res, err := simulator.Verify(ctx, simulator.VerifyOptions{Brokers: []string{k.Addr},
		Topics: []string{prefix + ".position", prefix + ".engine", prefix + ".events"}, Report: rep, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	res.Print(&sb)
	t.Logf("after the outage:\n%s", sb.String())
	if !res.OK() || res.Missing != 0 || res.OutOfOrder != 0 {
		t.Fatalf("acknowledged messages lost or reordered across the outage:\n%s\ngateway log:\n%s", sb.String(), ktail(gw.Logs(), 40))
	}
}
