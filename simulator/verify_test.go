package simulator

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// rec is one Kafka record a gateway would have written for the simulator.
type rec struct {
	topic, key, id, device string
	seq                    uint64
	run                    string
	raw                    string // value as is, instead of an envelope
}

func (r rec) message() kafka.Message {
	val := r.raw
	if val == "" {
		stream := strings.TrimPrefix(r.topic, "iot.")
		val = fmt.Sprintf(`{"id":%q,"device":%q,"stream":%q,"protocol":"mqtt","topic":"devices/%s/%s","received_at":"2026-01-01T00:00:00Z","payload":{"device":%q,"seq":%d,"ts":"2026-01-01T00:00:00Z","run":%q,"lat":53.5},"ref":{}}`,
			r.id, r.key, stream, r.key, stream, r.device, r.seq, r.run)
	}
	return kafka.Message{Topic: r.topic, Key: []byte(r.key), Value: []byte(val)}
}

func acked(ranges ...SeqRange) *DeviceResult {
	d := &DeviceResult{}
	for _, r := range ranges {
		for s := r.First; s <= r.Last; s++ {
			d.Acked.Add(s)
		}
	}
	d.LastAcked = d.Acked.Max()
	return d
}

func writeRecords(t *testing.T, addr string, bal kafka.Balancer, recs []rec) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Balancer: bal, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = r.message()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	c, err := kfake.NewCluster(kfake.SeedTopics(3, DefaultVerifyTopics...))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]

	var recs []rec
	for s := uint64(1); s <= 10; s++ {
		topic := "iot.position"
		if s%2 == 0 {
			topic = "iot.engine"
		}
		recs = append(recs, rec{topic: topic, key: "truck-0001", id: fmt.Sprintf("t1-%d", s), device: "truck-0001", seq: s, run: "run-a"})
		if s == 5 { // the gateway redelivered seq 4: a duplicate by seq and by id
			recs = append(recs, rec{topic: "iot.engine", key: "truck-0001", id: "t1-4", device: "truck-0001", seq: 4, run: "run-a"})
		}
	}
	for _, s := range []uint64{1, 2, 3, 4, 5, 6, 9, 8, 10} { // 7 lost, 8 and 9 swapped
		recs = append(recs, rec{topic: "iot.position", key: "truck-0002", id: fmt.Sprintf("t2-%d", s), device: "truck-0002", seq: s, run: "run-a"})
	}
	for s := uint64(1); s <= 6; s++ { // 6 was never acked
		recs = append(recs, rec{topic: "iot.climate", key: "sensor-0001", id: fmt.Sprintf("s1-%d", s), device: "sensor-0001", seq: s, run: "run-a"})
	}
	recs = append(recs,
		rec{topic: "iot.position", key: "truck-0001", id: "old-1", device: "truck-0001", seq: 1, run: "run-b"},
		rec{topic: "iot.events", key: "truck-0009", raw: `{"id":"x","device":"truck-0009","payload":{"hello":1}}`},
		rec{topic: "iot.events", key: "truck-0009", raw: `not json`},
		rec{topic: "iot.position", key: "truck-0003", id: "t3-1", device: "truck-0004", seq: 1, run: "run-a"},
	)
	writeRecords(t, addr, &kafka.Murmur2Balancer{}, recs)
	// One record of truck-0001 lands in a partition murmur2 would not pick.
	right := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte("truck-0001")}, 0, 1, 2)
	writeRecords(t, addr, kafka.BalancerFunc(func(kafka.Message, ...int) int { return (right + 1) % 3 }), []rec{
		{topic: "iot.position", key: "truck-0001", id: "t1-11", device: "truck-0001", seq: 11, run: "run-a"},
	})

	rep := &Report{RunID: "run-a", Devices: map[string]*DeviceResult{
		"truck-0001":  acked(SeqRange{1, 10}),
		"truck-0002":  acked(SeqRange{1, 10}),
		"sensor-0001": acked(SeqRange{1, 5}),
	}}
	res, err := Verify(context.Background(), VerifyOptions{
		Brokers: []string{addr}, Report: rep, Timeout: 20 * time.Second,
		Topics: append(append([]string(nil), DefaultVerifyTopics...), "iot.absent"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.Print(&out)
	t.Logf("\n%s", out.String())
	want := VerifyResult{
		Records: 31, Matched: 28, Foreign: 2, Malformed: 1, Devices: 4,
		Expected: 25, Missing: 1, Unacked: 3, DuplicateSeqs: 1, DuplicateIDs: 1,
		OutOfOrder: 1, SplitDevices: 1, Misrouted: 1, KeyMismatch: 1,
	}
	got := res
	got.RunID, got.Elapsed, got.Topics, got.Problems, got.DuplicateRate, got.Complete = "", 0, nil, nil, 0, false
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if !res.Complete || res.OK() || res.RunID != "run-a" {
		t.Fatalf("complete %v ok %v run %s", res.Complete, res.OK(), res.RunID)
	}
	if d := res.DuplicateRate; d < 1.0/28-1e-9 || d > 1.0/28+1e-9 {
		t.Errorf("duplicate rate %v", d)
	}
	for _, s := range []string{"missing truck-0002 seq 7", "out of order", "split across partitions", "misrouted", "key mismatch", "iot.absent       not found", "FAILED"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("Print lacks %q", s)
		}
	}

	// A clean run next to the old records passes.
	writeRecords(t, addr, &kafka.Murmur2Balancer{}, []rec{
		{topic: "iot.position", key: "truck-0001", id: "c1", device: "truck-0001", seq: 1, run: "run-c"},
		{topic: "iot.engine", key: "truck-0001", id: "c2", device: "truck-0001", seq: 2, run: "run-c"},
		{topic: "iot.position", key: "truck-0001", id: "c3", device: "truck-0001", seq: 3, run: "run-c"},
	})
	res, err = Verify(context.Background(), VerifyOptions{
		Brokers: []string{addr},
		Report:  &Report{RunID: "run-c", Devices: map[string]*DeviceResult{"truck-0001": acked(SeqRange{1, 3})}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Matched != 3 || res.Foreign != 30 || res.Missing != 0 {
		out.Reset()
		res.Print(&out)
		t.Fatalf("clean run not OK:\n%s", out.String())
	}
}

func TestVerifyNoBroker(t *testing.T) {
	_, err := Verify(context.Background(), VerifyOptions{Brokers: []string{"127.0.0.1:1"}, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("no error without a broker")
	}
	if _, err := Verify(context.Background(), VerifyOptions{Brokers: []string{"nohostport"}}); err == nil {
		t.Fatal("bad broker address accepted")
	}
}
