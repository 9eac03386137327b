package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// Brokers are Kafka bootstrap addresses (host:port). Default
	// 127.0.0.1:9092, where `iotgw dev` serves.
	Brokers []string `yaml:"brokers"`
	// Topics are read from their first offset up to the high watermark each
	// partition had when Verify started. Default iot.position, iot.engine,
	// iot.events and iot.climate.
	Topics []string `yaml:"topics"`
	// RunID keeps only records whose payload "run" matches; others count as
	// foreign. Default: Report.RunID; empty with no report checks every
	// simulator record.
	RunID string `yaml:"run_id"`
	// Timeout bounds the whole verification. Default 60s.
	Timeout time.Duration `yaml:"timeout"`
	// Report is what the simulator had acknowledged; every acked seq must
	// be in Kafka. Nil checks order, duplicates, keys and partitions only.
	Report *Report `yaml:"-"`
	// Logger receives progress; nil discards.
	Logger *slog.Logger `yaml:"-"`
}

// DefaultVerifyTopics are the Kafka topics the default routes give the
// simulator's streams.
var DefaultVerifyTopics = []string{"iot." + StreamPosition, "iot." + StreamEngine, "iot." + StreamEvents, "iot." + StreamClimate}

// maxProblemSamples bounds VerifyResult.Problems.
const maxProblemSamples = 20

// WithDefaults returns a copy with unset fields at their defaults.
func (o VerifyOptions) WithDefaults() VerifyOptions {
	if len(o.Brokers) == 0 {
		o.Brokers = []string{"127.0.0.1:9092"}
	}
	if len(o.Topics) == 0 {
		o.Topics = slices.Clone(DefaultVerifyTopics)
	}
	if o.RunID == "" && o.Report != nil {
		o.RunID = o.Report.RunID
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	return o
}

// Validate checks the options after defaulting; errors wrap
// ErrInvalidOptions and name the option.
func (o VerifyOptions) Validate() error {
	o = o.WithDefaults()
	for _, b := range o.Brokers {
		if !strings.Contains(b, ":") {
			return fmt.Errorf("%w brokers: want host:port (got %q)", ErrInvalidOptions, b)
		}
	}
	for _, t := range o.Topics {
		if t == "" {
			return fmt.Errorf("%w topics: empty topic name", ErrInvalidOptions)
		}
	}
	if o.Timeout < 0 {
		return fmt.Errorf("%w timeout: must be positive (got %s)", ErrInvalidOptions, o.Timeout)
	}
	return nil
}

// TopicResult is what Verify read from one topic.
type TopicResult struct {
	Topic      string `json:"topic"`
	Partitions int    `json:"partitions"`
	Records    int64  `json:"records"`
	Found      bool   `json:"found"` // false when the topic does not exist
}

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	RunID    string        `json:"run_id"`
	Complete bool          `json:"complete"` // every partition was read up to its high watermark
	Elapsed  time.Duration `json:"elapsed"`
	Topics   []TopicResult `json:"topics"`

	Records   int64 `json:"records"`   // records read
	Matched   int64 `json:"matched"`   // simulator records of this run
	Foreign   int64 `json:"foreign"`   // valid envelopes of another run or not from the simulator
	Malformed int64 `json:"malformed"` // values that are not an envelope with a JSON payload
	Devices   int   `json:"devices"`   // devices seen in this run's records

	Expected int64 `json:"expected"` // acked messages in the report
	Missing  int64 `json:"missing"`  // acked messages not found
	Unacked  int64 `json:"unacked"`  // distinct messages found that were not acked (QoS 0, acks lost, refused late)

	DuplicateSeqs int64   `json:"duplicate_seqs"` // records whose device+seq was seen before
	DuplicateIDs  int64   `json:"duplicate_ids"`  // records whose envelope id was seen before
	DuplicateRate float64 `json:"duplicate_rate"` // DuplicateSeqs / Matched

	OutOfOrder   int64 `json:"out_of_order"`  // records with a lower seq than an earlier one of the device in the partition
	SplitDevices int64 `json:"split_devices"` // devices whose records of one topic are in more than one partition
	Misrouted    int64 `json:"misrouted"`     // records not in the partition murmur2(key) picks
	KeyMismatch  int64 `json:"key_mismatch"`  // records whose key, envelope device and payload device differ

	// Problems are the first few findings, for people.
	Problems []string `json:"problems,omitempty"`
}

// OK is true when the topics were read to the end, every acked message
// arrived, and nothing was out of order, split across partitions,
// misrouted or mis-keyed. Duplicates are allowed: delivery is
// at-least-once; they are reported with their rate.
func (r *VerifyResult) OK() bool {
	return r.Complete && r.Missing == 0 && r.OutOfOrder == 0 && r.SplitDevices == 0 &&
		r.Misrouted == 0 && r.KeyMismatch == 0
}

// Print writes the result for people.
func (r *VerifyResult) Print(w io.Writer) {
	verdict := "OK"
	if !r.OK() {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "verify run %s: %s (%s)\n", orDash(r.RunID), verdict, r.Elapsed.Round(time.Millisecond))
	for _, t := range r.Topics {
		if !t.Found {
			fmt.Fprintf(w, "  %-16s not found\n", t.Topic)
			continue
		}
		fmt.Fprintf(w, "  %-16s %d partitions, %d records\n", t.Topic, t.Partitions, t.Records)
	}
	if !r.Complete {
		fmt.Fprintln(w, "  incomplete: timed out before reaching the high watermarks")
	}
	fmt.Fprintf(w, "  records %d: this run %d, foreign %d, malformed %d; devices %d\n",
		r.Records, r.Matched, r.Foreign, r.Malformed, r.Devices)
	fmt.Fprintf(w, "  acked %d, missing %d, found but not acked %d\n", r.Expected, r.Missing, r.Unacked)
	fmt.Fprintf(w, "  duplicates %d by seq (%.3f%%), %d by envelope id\n", r.DuplicateSeqs, 100*r.DuplicateRate, r.DuplicateIDs)
	fmt.Fprintf(w, "  out of order %d, devices split across partitions %d, misrouted %d, key mismatches %d\n",
		r.OutOfOrder, r.SplitDevices, r.Misrouted, r.KeyMismatch)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "    %s\n", p)
	}
}

func (r *VerifyResult) problem(format string, args ...any) {
	if len(r.Problems) < maxProblemSamples {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// envelope is the part of the gateway's Kafka value Verify reads.
type envelope struct {
	ID      string          `json:"id"`
	Device  string          `json:"device"`
	Payload json.RawMessage `json:"payload"`
}

// simPayload is the part of a simulator payload Verify reads.
type simPayload struct {
	Device string `json:"device"`
	Seq    uint64 `json:"seq"`
	Run    string `json:"run"`
}

// deviceSeen is what Verify found of one device.
type deviceSeen struct {
	seen      SeqSet
	partition map[string]int    // topic -> partition of its first record
	last      map[string]uint64 // topic/partition -> highest seq so far
	split     bool
}

// verifier accumulates findings over all records.
type verifier struct {
	runID   string
	res     *VerifyResult
	devices map[string]*deviceSeen
	ids     map[uint64]struct{} // 64-bit hashes of envelope ids
}

// Verify reads the gateway's Kafka topics and checks what the simulator
// sent against them: every acked message arrived (by device and seq),
// per-device order within each partition (duplicates aside), duplicates by
// seq and by envelope id, and that each device's records of a topic are in
// one partition, keyed by device id and placed by murmur2 like the Java
// client. It reads no consumer group; each partition is read from its
// first offset to the high watermark it had when Verify started.
//
// The error is for failures to verify at all (no broker, bad options).
// Running out of time returns the partial result with Complete false.
func Verify(ctx context.Context, opts VerifyOptions) (VerifyResult, error) {
	o := opts.WithDefaults()
	res := VerifyResult{RunID: o.RunID}
	if err := o.Validate(); err != nil {
		return res, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "simulator-verify")
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	client := &kafka.Client{Addr: kafka.TCP(o.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: o.Topics})
	if err != nil {
		return res, fmt.Errorf("kafka metadata from %s: %w", strings.Join(o.Brokers, ","), err)
	}
	v := &verifier{runID: o.RunID, res: &res, devices: map[string]*deviceSeen{}, ids: map[uint64]struct{}{}}
	res.Complete = true
	for _, topic := range o.Topics {
		tr := TopicResult{Topic: topic}
		var parts []int
		for _, t := range md.Topics {
			if t.Name == topic && t.Error == nil {
				tr.Found = true
				for _, p := range t.Partitions {
					parts = append(parts, p.ID)
				}
			}
		}
		slices.Sort(parts)
		tr.Partitions = len(parts)
		if tr.Found {
			n, complete, err := v.readTopic(ctx, client, topic, parts)
			tr.Records = n
			if err != nil {
				res.Topics = append(res.Topics, tr)
				res.Complete = false
				if ctx.Err() != nil {
					log.Warn("verify timed out", "topic", topic, "error", err)
					break
				}
				return res, err
			}
			res.Complete = res.Complete && complete
		}
		res.Topics = append(res.Topics, tr)
	}
	v.finish(o.Report)
	res.Elapsed = time.Since(start)
	log.Info("verify done", "run", res.RunID, "ok", res.OK(), "records", res.Records, "missing", res.Missing)
	return res, nil
}

// readTopic reads every partition of one topic up to the high watermarks
// it has now.
func (v *verifier) readTopic(ctx context.Context, client *kafka.Client, topic string, parts []int) (int64, bool, error) {
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, p := range parts {
		req.Topics[topic] = append(req.Topics[topic], kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, req)
	if err != nil {
		return 0, false, fmt.Errorf("kafka list offsets of %s: %w", topic, err)
	}
	var n int64
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return n, false, fmt.Errorf("kafka list offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		got, err := v.readPartition(ctx, client, topic, po.Partition, po.FirstOffset, po.LastOffset, parts)
		n += got
		if err != nil {
			return n, false, err
		}
	}
	return n, true, nil
}

// readPartition fetches [first, end) of one partition.
func (v *verifier) readPartition(ctx context.Context, client *kafka.Client, topic string, part int, first, end int64, parts []int) (int64, error) {
	var n int64
	off := first
	for off < end {
		resp, err := client.Fetch(ctx, &kafka.FetchRequest{
			Topic: topic, Partition: part, Offset: off,
			MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 500 * time.Millisecond,
		})
		if err == nil {
			err = resp.Error
		}
		if err != nil {
			return n, fmt.Errorf("kafka fetch %s/%d at offset %d: %w", topic, part, off, err)
		}
		for {
			rec, err := resp.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("kafka read %s/%d at offset %d: %w", topic, part, off, err)
			}
			if rec.Offset < off {
				continue // batches may start before the requested offset
			}
			if rec.Offset >= end {
				return n, nil
			}
			key, kerr := readBytes(rec.Key)
			val, verr := readBytes(rec.Value)
			if kerr != nil || verr != nil {
				return n, fmt.Errorf("kafka read %s/%d at offset %d: %w", topic, part, rec.Offset, errors.Join(kerr, verr))
			}
			v.record(topic, part, parts, rec.Offset, key, val)
			n++
			off = rec.Offset + 1
		}
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
	}
	return n, nil
}

func readBytes(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return protocol.ReadAll(b)
}

// record checks one Kafka record; parts are the topic's partitions.
func (v *verifier) record(topic string, part int, parts []int, offset int64, key, val []byte) {
	r := v.res
	r.Records++
	var env envelope
	if err := json.Unmarshal(val, &env); err != nil || len(env.Payload) == 0 {
		r.Malformed++
		return
	}
	var p simPayload
	if err := json.Unmarshal(env.Payload, &p); err != nil || p.Device == "" || p.Seq == 0 {
		r.Foreign++
		return
	}
	if v.runID != "" && p.Run != v.runID {
		r.Foreign++
		return
	}
	r.Matched++
	where := topic + "/" + strconv.Itoa(part)
	if string(key) != env.Device || env.Device != p.Device {
		r.KeyMismatch++
		r.problem("key mismatch at %s offset %d: key %q, envelope device %q, payload device %q", where, offset, key, env.Device, p.Device)
	}
	if want := (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: key}, parts...); want != part {
		r.Misrouted++
		r.problem("misrouted at %s offset %d: key %q belongs in partition %d", where, offset, key, want)
	}
	if env.ID != "" {
		h := fnv.New64a()
		h.Write([]byte(env.ID))
		if _, dup := v.ids[h.Sum64()]; dup {
			r.DuplicateIDs++
		} else {
			v.ids[h.Sum64()] = struct{}{}
		}
	}
	d := v.devices[p.Device]
	if d == nil {
		d = &deviceSeen{partition: map[string]int{}, last: map[string]uint64{}}
		v.devices[p.Device] = d
	}
	if first, ok := d.partition[topic]; !ok {
		d.partition[topic] = part
	} else if first != part && !d.split {
		d.split = true
		r.SplitDevices++
		r.problem("device %s split across partitions of %s: %d and %d", p.Device, topic, first, part)
	}
	if !d.seen.Add(p.Seq) {
		r.DuplicateSeqs++
		return
	}
	if last := d.last[where]; p.Seq < last {
		r.OutOfOrder++
		r.problem("out of order at %s offset %d: %s seq %d after seq %d", where, offset, p.Device, p.Seq, last)
	} else {
		d.last[where] = p.Seq
	}
}

// finish compares what was found with what was acked.
func (v *verifier) finish(rep *Report) {
	r := v.res
	r.Devices = len(v.devices)
	if r.Matched > 0 {
		r.DuplicateRate = float64(r.DuplicateSeqs) / float64(r.Matched)
	}
	if rep == nil {
		return
	}
	ids := make([]string, 0, len(rep.Devices))
	for id := range rep.Devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	empty := &deviceSeen{}
	for _, id := range ids {
		acked := &rep.Devices[id].Acked
		r.Expected += int64(acked.Len())
		d := v.devices[id]
		if d == nil {
			d = empty
		}
		for _, m := range acked.Minus(&d.seen) {
			r.Missing += int64(m.Last - m.First + 1)
			r.problem("missing %s seq %s", id, formatRanges([]SeqRange{m}))
		}
	}
	for id, d := range v.devices {
		var acked *SeqSet
		if dr := rep.Devices[id]; dr != nil {
			acked = &dr.Acked
		} else {
			acked = &SeqSet{}
		}
		for _, u := range d.seen.Minus(acked) {
			r.Unacked += int64(u.Last - u.First + 1)
		}
	}
}
