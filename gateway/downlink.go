package gateway

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// Command headers a producer of iot.commands may set; all are optional.
const (
	HeaderCommandID      = "iotgw-command-id"      // the command id; default topic/partition/offset
	HeaderCommandExpires = "iotgw-command-expires" // RFC 3339 time after which the command is not delivered
	HeaderCommandTTL     = "iotgw-command-ttl"     // or a duration from the record's timestamp, e.g. 30s
)

// Command delivery outcomes, the "status" of a status record.
const (
	CommandDelivered = "delivered" // the device acknowledged it (MQTT PUBACK, CoAP ACK)
	CommandExpired   = "expired"   // its device did not connect to any gateway before it expired
	CommandFailed    = "failed"    // delivery failed max_attempts times, the queue was full, or it had no device
)

// DownlinkOptions configure delivery of commands from Kafka to devices.
type DownlinkOptions struct {
	// Enabled turns the command consumer on; default false.
	Enabled bool `yaml:"enabled"`
	// Topic holds the commands: key = device id, value = the command bytes
	// as the device receives them; default iot.commands.
	Topic string `yaml:"topic"`
	// StatusTopic receives one JSON record per delivered, expired or
	// failed command; default iot.command-status.
	StatusTopic string `yaml:"status_topic"`
	// Group is the consumer group that stores this gateway's position in
	// Topic; default iotgw-{gateway.id}. Every gateway needs its own:
	// each reads every command (see Downlink).
	Group string `yaml:"group"`
	// TTL is how long a command waits for its device to connect, counted
	// from the command record's timestamp, unless the record carries an
	// iotgw-command-expires or iotgw-command-ttl header; default 1h.
	TTL time.Duration `yaml:"ttl"`
	// MaxQueued bounds the commands waiting for offline devices. When it is
	// reached the oldest waiting command fails (status failed, "queue
	// full") to make room; default 10000.
	MaxQueued int `yaml:"max_queued"`
	// DeliverTimeout bounds one delivery attempt, the wait for the device's
	// acknowledgement included; default 10s.
	DeliverTimeout time.Duration `yaml:"deliver_timeout"`
	// MaxAttempts is how many times a command is offered to a connected
	// device that does not acknowledge it before it fails; default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryInterval is how often waiting commands are offered to their
	// devices again (a device that connects gets its commands within it);
	// default 1s.
	RetryInterval time.Duration `yaml:"retry_interval"`
	// Workers is how many devices are delivered to at once; default 16.
	Workers int `yaml:"workers"`
}

// SetDefaults fills unset fields; gatewayID names the default group.
func (o *DownlinkOptions) SetDefaults(gatewayID string) {
	if o.Topic == "" {
		o.Topic = "iot.commands"
	}
	if o.StatusTopic == "" {
		o.StatusTopic = "iot.command-status"
	}
	if o.Group == "" {
		o.Group = "iotgw-" + gatewayID
	}
	if o.TTL == 0 {
		o.TTL = time.Hour
	}
	if o.MaxQueued == 0 {
		o.MaxQueued = 10000
	}
	if o.DeliverTimeout == 0 {
		o.DeliverTimeout = 10 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 3
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = time.Second
	}
	if o.Workers == 0 {
		o.Workers = 16
	}
}

// Validate reports the first invalid field by its config key.
func (o *DownlinkOptions) Validate() error {
	if !o.Enabled {
		return nil
	}
	if err := ValidTopicName(o.Topic); err != nil {
		return fmt.Errorf("downlink.topic: %w", err)
	}
	if err := ValidTopicName(o.StatusTopic); err != nil {
		return fmt.Errorf("downlink.status_topic: %w", err)
	}
	if o.StatusTopic == o.Topic {
		return errors.New("downlink.status_topic: must differ from downlink.topic")
	}
	if o.Group == "" || o.Group == "iotgw-" {
		return errors.New("downlink.group: required (default iotgw-{gateway.id})")
	}
	switch {
	case o.TTL <= 0:
		return errors.New("downlink.ttl: must be positive")
	case o.MaxQueued < 1 || o.MaxQueued > 10_000_000:
		return fmt.Errorf("downlink.max_queued: %d is outside 1..10000000", o.MaxQueued)
	case o.DeliverTimeout <= 0:
		return errors.New("downlink.deliver_timeout: must be positive")
	case o.MaxAttempts < 1:
		return errors.New("downlink.max_attempts: must be at least 1")
	case o.RetryInterval <= 0:
		return errors.New("downlink.retry_interval: must be positive")
	case o.Workers < 1 || o.Workers > 1024:
		return fmt.Errorf("downlink.workers: %d is outside 1..1024", o.Workers)
	}
	return nil
}

// CommandStatus is the JSON value of a status record (key = device id).
type CommandStatus struct {
	CommandID string    `json:"command_id"`
	Device    string    `json:"device"`
	Status    string    `json:"status"` // CommandDelivered, CommandExpired or CommandFailed
	At        time.Time `json:"at"`
	Gateway   string    `json:"gateway"`
	Attempts  int       `json:"attempts,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// DownlinkStats are the downlink's counters since start.
type DownlinkStats struct {
	Received  uint64 `json:"received"` // command records read
	Delivered uint64 `json:"delivered"`
	Expired   uint64 `json:"expired"`
	Failed    uint64 `json:"failed"`
	Settled   uint64 `json:"settled"` // ended by another gateway's status record, or already ended before a restart
	Queued    int    `json:"queued"`  // waiting for their device now
	KafkaUp   bool   `json:"kafka_up"`
	LastError string `json:"last_error"`
}

// Downlink consumes commands from Kafka and delivers each to its device
// through the CommandTargets (the MQTT and CoAP adapters).
//
// # Several gateways
//
// A device is connected to one gateway at a time, and nobody but that
// gateway knows which one, so every gateway reads every command: each
// consumes all partitions of the command topic under its own consumer group
// (iotgw-{gateway.id}), and delivers a command only if the device is
// connected to it (the targets answer ErrNotConnected otherwise). A command
// whose device is not connected waits in memory until the device connects
// here, the command expires, or another gateway reports it done.
//
// Every terminal outcome is a record on the status topic (delivered,
// expired, failed; with the gateway's id). Every gateway also reads the
// status topic: when another gateway reports a command done, it drops its
// own copy. So a command is delivered once, by the gateway its device is
// connected to; if the device moves between gateways faster than a status
// record travels (well under a second), it can get the command twice,
// with the same command id, which devices should use to drop duplicates.
// Expiry is reported by whichever gateway gets there first: each waits a
// few seconds past the expiry, staggered by gateway, and stays quiet if a
// status for the command already arrived, so usually one "expired" record
// appears per command; consumers should take the first terminal status per
// command_id, and "delivered" wins over "expired".
//
// The alternative, one shared consumer group plus a device-to-gateway
// registry (or forwarding between gateways), delivers without reading
// every command everywhere, but needs a shared registry kept exact through
// reconnects and crashes; reading the whole topic costs one fetch per
// partition per gateway, which command volumes make negligible.
//
// # Storage and restarts
//
// The waiting queue is Kafka itself: a gateway commits, per partition, the
// offset below which every command has its status record written, so
// after a crash or restart it reads again from the oldest command that was
// still waiting or whose status was not yet acknowledged by Kafka. Before
// consuming commands it reads the status topic back over the TTL, so
// commands already delivered (by it or by another gateway) are not
// delivered again. In memory, at most max_queued commands wait; past that
// the oldest fails with a status record.
type Downlink struct {
	opts      DownlinkOptions
	kopts     KafkaOptions
	targets   []CommandTarget
	gatewayID string
	log       *slog.Logger

	client *kafka.Client
	sink   *KafkaSink // writes status records; owns the transport

	mu      sync.Mutex
	devices map[string]*deviceQueue
	arrival *list.List // every waiting *pendingCmd, oldest first
	parts   map[int]*partitionState
	settled *idSet // command ids with a terminal status anywhere

	wake     chan struct{}
	statusCh chan statusItem
	running  atomic.Bool

	received, delivered, expired, failed, skipped atomic.Uint64
	kafkaUp                                       atomic.Bool
	lastErr                                       atomic.Value // string
}

type pendingCmd struct {
	cmd       Command
	partition int
	offset    int64
	attempts  int
	elem      *list.Element // in Downlink.arrival; nil once removed
}

type deviceQueue struct {
	cmds  []*pendingCmd
	busy  bool      // a worker is delivering to this device
	after time.Time // not before: set after a failed attempt
}

type statusItem struct {
	status    CommandStatus
	partition int
	offset    int64
	write     bool // false: settled elsewhere, only mark done
}

// partitionState tracks which read commands still wait for a status, so
// the committed offset never passes one of them.
type partitionState struct {
	outstanding []int64 // offsets read and not done, increasing
	done        map[int64]bool
	next        int64 // the next offset to read
	committed   int64
}

func (p *partitionState) add(off int64) {
	p.outstanding = append(p.outstanding, off)
	p.next = off + 1
}

// watermark is the offset to commit: the oldest outstanding offset, or the
// next to read when none is.
func (p *partitionState) watermark() int64 {
	for len(p.outstanding) > 0 && p.done[p.outstanding[0]] {
		delete(p.done, p.outstanding[0])
		p.outstanding = p.outstanding[1:]
	}
	if len(p.outstanding) > 0 {
		return p.outstanding[0]
	}
	return p.next
}

// NewDownlink checks the options and builds the consumer; it does not
// connect until Run. targets are asked in order for each command.
func NewDownlink(opts DownlinkOptions, kopts KafkaOptions, targets []CommandTarget, gatewayID string, logger *slog.Logger) (*Downlink, error) {
	opts.SetDefaults(gatewayID)
	opts.Enabled = true
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	kopts.SetDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "downlink")
	sink, err := NewKafkaSink(kopts, 512, logger)
	if err != nil {
		return nil, err
	}
	d := &Downlink{
		opts: opts, kopts: kopts, targets: targets, gatewayID: gatewayID, log: logger,
		client:   &kafka.Client{Addr: kafka.TCP(kopts.Brokers...), Timeout: kopts.WriteTimeout, Transport: sink.transport},
		sink:     sink,
		devices:  map[string]*deviceQueue{},
		arrival:  list.New(),
		parts:    map[int]*partitionState{},
		settled:  newIDSet(max(16*opts.MaxQueued, 100_000)),
		wake:     make(chan struct{}, 1),
		statusCh: make(chan statusItem, 1024),
	}
	return d, nil
}

// Stats returns the counters.
func (d *Downlink) Stats() DownlinkStats {
	d.mu.Lock()
	queued := d.arrival.Len()
	d.mu.Unlock()
	s := DownlinkStats{Received: d.received.Load(), Delivered: d.delivered.Load(), Expired: d.expired.Load(),
		Failed: d.failed.Load(), Settled: d.skipped.Load(), Queued: queued, KafkaUp: d.kafkaUp.Load()}
	if v, ok := d.lastErr.Load().(string); ok {
		s.LastError = v
	}
	return s
}

// CheckTopics makes sure the command and status topics exist, creating
// them when kafka.create_topics allows. Like the package's CheckTopics it
// returns an error (naming the config key) only when Kafka answered that a
// topic cannot be used, and logs and returns nil when Kafka is unreachable.
func (d *Downlink) CheckTopics(ctx context.Context) error {
	err := d.ensureTopics(ctx)
	if err == nil || errors.Is(err, ErrTopicRejected) {
		return err
	}
	d.log.Warn("could not check downlink topics at start; retrying in the background", "error", err)
	return nil
}

func (d *Downlink) ensureTopics(ctx context.Context) error {
	for _, t := range []StaticTopic{{Key: "downlink.topic", Spec: TopicSpec{Name: d.opts.Topic}}, {Key: "downlink.status_topic", Spec: TopicSpec{Name: d.opts.StatusTopic}}} {
		if err := d.sink.EnsureTopic(ctx, t.Spec); err != nil {
			if errors.Is(err, ErrTopicRejected) {
				return fmt.Errorf("%s: %w", t.Key, err)
			}
			return err
		}
	}
	return nil
}

// Run consumes and delivers until ctx is done, then writes the statuses it
// has, commits, and returns nil. Kafka being unreachable is retried with
// capped backoff, never returned. Run may be called once.
func (d *Downlink) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("downlink: Run called twice")
	}
	defer d.sink.Close()

	var parts []int
	var statusParts []int
	if err := d.retry(ctx, "downlink start", func() error {
		if err := d.ensureTopics(ctx); err != nil {
			return err
		}
		var err error
		if parts, err = d.partitions(ctx, d.opts.Topic); err != nil {
			return err
		}
		statusParts, err = d.partitions(ctx, d.opts.StatusTopic)
		return err
	}); err != nil {
		return nil // ctx done
	}

	// Catch up on statuses first, so a restart does not deliver again what
	// was delivered before it.
	var wg sync.WaitGroup
	defer wg.Wait()
	statusCtx, stopStatus := context.WithCancel(context.Background())
	defer stopStatus()
	caughtUp := make(chan struct{}, len(statusParts))
	for _, p := range statusParts {
		wg.Go(func() { d.watchStatus(statusCtx, p, caughtUp) })
	}
	catchUp := time.NewTimer(30 * time.Second)
	for range statusParts {
		select {
		case <-caughtUp:
			continue
		case <-catchUp.C:
			d.log.Warn("status topic not read to its end within 30s; commands may be delivered again", "topic", d.opts.StatusTopic)
		case <-ctx.Done():
			catchUp.Stop()
			return nil
		}
		break
	}
	catchUp.Stop()

	var starts map[int]int64
	if err := d.retry(ctx, "downlink offsets", func() error {
		var err error
		starts, err = d.startOffsets(ctx, parts)
		return err
	}); err != nil {
		return nil
	}
	d.mu.Lock()
	for _, p := range parts {
		d.parts[p] = &partitionState{next: starts[p], committed: starts[p], done: map[int64]bool{}}
	}
	d.mu.Unlock()
	d.log.Info("downlink consuming", "topic", d.opts.Topic, "partitions", len(parts), "group", d.opts.Group, "status_topic", d.opts.StatusTopic)

	// Statuses are written until the end: workers stop first, then the
	// writer drains what they reported and the last commit follows.
	writerCtx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); d.writeStatuses(writerCtx) }()

	var work sync.WaitGroup
	for _, p := range parts {
		work.Go(func() { d.consume(ctx, p, starts[p]) })
	}
	work.Go(func() { d.dispatch(ctx) })
	work.Go(func() { d.commitLoop(ctx) })
	work.Wait()

	// Give the writer a moment for what is queued, then commit what it wrote.
	drain := time.AfterFunc(2*time.Second, stopWriter)
	close(d.statusCh)
	<-writerDone
	drain.Stop()
	stopWriter()
	stopStatus()
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	d.commit(cctx)
	cancel()
	return nil
}

// retry runs fn with capped backoff until it succeeds or ctx is done.
func (d *Downlink) retry(ctx context.Context, what string, fn func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil {
			d.kafkaUp.Store(true)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.kafkaUp.Store(false)
		d.lastErr.Store(err.Error())
		// A new topic's leader or a group's coordinator takes a moment to
		// appear: warn only when it lasts.
		level := slog.LevelDebug
		if attempt == 3 || (attempt > 3 && attempt%20 == 0) || errors.Is(err, ErrTopicRejected) {
			level = slog.LevelWarn
		}
		d.log.Log(ctx, level, what+" failed; retrying", "error", err, "attempt", attempt+1, "backoff", backoff)
		if errors.Is(err, ErrTopicRejected) {
			backoff = 30 * time.Second
		}
		if !sleepCtx(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (d *Downlink) partitions(ctx context.Context, topic string) ([]int, error) {
	md, err := d.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		ps := make([]int, 0, len(t.Partitions))
		for _, p := range t.Partitions {
			ps = append(ps, p.ID)
		}
		if len(ps) > 0 {
			return ps, nil
		}
	}
	return nil, fmt.Errorf("metadata of %s: %w", topic, kafka.UnknownTopicOrPartition)
}

// startOffsets is where each partition is read from: the group's committed
// offset, or for a new group the first command young enough not to have
// expired.
func (d *Downlink) startOffsets(ctx context.Context, parts []int) (map[int]int64, error) {
	resp, err := d.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: d.opts.Group, Topics: map[string][]int{d.opts.Topic: parts}})
	if err != nil {
		return nil, fmt.Errorf("fetch offsets of group %s: %w", d.opts.Group, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("fetch offsets of group %s: %w", d.opts.Group, resp.Error)
	}
	out := map[int]int64{}
	var fresh []int
	for _, p := range resp.Topics[d.opts.Topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("fetch offsets of group %s: %w", d.opts.Group, p.Error)
		}
		if p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	for _, p := range parts {
		if _, ok := out[p]; !ok {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) > 0 {
		offs, err := d.offsetsAt(ctx, d.opts.Topic, fresh, time.Now().Add(-d.opts.TTL))
		if err != nil {
			return nil, err
		}
		for p, o := range offs {
			out[p] = o
		}
	}
	return out, nil
}

// offsetsAt finds, per partition, the first offset with a timestamp at or
// after t (the end of the partition when there is none).
func (d *Downlink) offsetsAt(ctx context.Context, topic string, parts []int, t time.Time) (map[int]int64, error) {
	byTime := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	last := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, p := range parts {
		byTime.Topics[topic] = append(byTime.Topics[topic], kafka.TimeOffsetOf(p, t))
		last.Topics[topic] = append(last.Topics[topic], kafka.LastOffsetOf(p))
	}
	out := map[int]int64{}
	for _, req := range []*kafka.ListOffsetsRequest{last, byTime} {
		resp, err := d.client.ListOffsets(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
		}
		for _, po := range resp.Topics[topic] {
			if po.Error != nil {
				return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, po.Partition, po.Error)
			}
			if req == last {
				out[po.Partition] = po.LastOffset
				continue
			}
			for off := range po.Offsets {
				if off >= 0 && off < out[po.Partition] {
					out[po.Partition] = off
				}
			}
		}
	}
	return out, nil
}

// fetchLoop reads one partition from offset from until ctx is done, handing
// each record to handle in order; idle is called whenever a fetch reached
// the partition's high watermark.
func (d *Downlink) fetchLoop(ctx context.Context, topic string, part int, from int64, handle func(*kafka.Record, []byte, []byte) bool, idle func()) {
	off := from
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		resp, err := d.client.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: part, Offset: off,
			MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 500 * time.Millisecond})
		if err == nil {
			err = resp.Error
		}
		if errors.Is(err, kafka.OffsetOutOfRange) {
			// Retention removed what we had not read: start at the oldest left.
			if offs, lerr := d.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.FirstOffsetOf(part)}}}); lerr == nil && len(offs.Topics[topic]) == 1 && offs.Topics[topic][0].FirstOffset > off {
				d.log.Warn("commands were deleted by retention before they were read", "topic", topic, "partition", part, "from", off, "to", offs.Topics[topic][0].FirstOffset)
				off = offs.Topics[topic][0].FirstOffset
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.kafkaUp.Store(false)
			d.lastErr.Store(err.Error())
			d.log.Debug("fetch failed", "topic", topic, "partition", part, "error", err)
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		d.kafkaUp.Store(true)
		backoff = 100 * time.Millisecond
		for resp.Records != nil {
			rec, err := resp.Records.ReadRecord()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					d.log.Warn("reading fetched records failed", "topic", topic, "partition", part, "error", err)
				}
				break
			}
			if rec.Offset < off {
				continue // a batch may start before the offset asked for
			}
			key, kerr := readAll(rec.Key)
			val, verr := readAll(rec.Value)
			if kerr != nil || verr != nil {
				d.log.Warn("reading a fetched record failed", "topic", topic, "partition", part, "offset", rec.Offset, "error", errors.Join(kerr, verr))
				break
			}
			if !handle(rec, key, val) {
				return
			}
			off = rec.Offset + 1
		}
		if off >= resp.HighWatermark && idle != nil {
			idle()
		}
	}
}

func readAll(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return protocol.ReadAll(b)
}

// watchStatus reads one partition of the status topic from TTL ago: every
// terminal status settles its command here too. caughtUp gets one value
// when the partition's end is first reached.
func (d *Downlink) watchStatus(ctx context.Context, part int, caughtUp chan<- struct{}) {
	var from int64
	if err := d.retry(ctx, "status topic offsets", func() error {
		offs, err := d.offsetsAt(ctx, d.opts.StatusTopic, []int{part}, time.Now().Add(-d.opts.TTL-expiryStagger))
		from = offs[part]
		return err
	}); err != nil {
		return
	}
	reported := false
	d.fetchLoop(ctx, d.opts.StatusTopic, part, from, func(_ *kafka.Record, _, val []byte) bool {
		var st CommandStatus
		if json.Unmarshal(val, &st) != nil || st.CommandID == "" {
			return true
		}
		d.settle(st)
		return true
	}, func() {
		if !reported {
			reported = true
			caughtUp <- struct{}{}
		}
	})
}

// settle records that cmd has a terminal status somewhere and drops a
// waiting copy of it, unless this gateway wrote that status.
func (d *Downlink) settle(st CommandStatus) {
	d.mu.Lock()
	d.settled.add(st.CommandID)
	var drop *pendingCmd
	if st.Gateway != d.gatewayID {
		if dq := d.devices[st.Device]; dq != nil {
			for i, pc := range dq.cmds {
				// The head may be in a worker's hands; it settles itself.
				if pc.cmd.ID == st.CommandID && !(i == 0 && dq.busy) {
					drop = pc
					d.removeLocked(pc)
					break
				}
			}
		}
	}
	d.mu.Unlock()
	if drop != nil {
		d.skipped.Add(1)
		d.log.Debug("command settled by another gateway", "device", st.Device, "command", st.CommandID, "status", st.Status, "by", st.Gateway)
		d.markDone(drop.partition, drop.offset)
	}
}

// consume reads one command partition and queues each command.
func (d *Downlink) consume(ctx context.Context, part int, from int64) {
	d.fetchLoop(ctx, d.opts.Topic, part, from, func(rec *kafka.Record, key, val []byte) bool {
		d.received.Add(1)
		pc := &pendingCmd{cmd: d.command(rec, part, key, val), partition: part, offset: rec.Offset}
		return d.enqueue(ctx, pc)
	}, nil)
}

// command turns a record into a Command.
func (d *Downlink) command(rec *kafka.Record, part int, key, val []byte) Command {
	cmd := Command{Device: string(key), Payload: val}
	ttl := d.opts.TTL
	for _, h := range rec.Headers {
		switch h.Key {
		case HeaderCommandID:
			cmd.ID = string(h.Value)
		case HeaderCommandExpires:
			if t, err := time.Parse(time.RFC3339Nano, string(h.Value)); err == nil {
				cmd.Expires = t
			}
		case HeaderCommandTTL:
			if v, err := time.ParseDuration(string(h.Value)); err == nil && v > 0 {
				ttl = v
			}
		}
		cmd.Headers = append(cmd.Headers, Header{Key: h.Key, Value: h.Value})
	}
	if cmd.ID == "" {
		cmd.ID = d.opts.Topic + "/" + strconv.Itoa(part) + "/" + strconv.FormatInt(rec.Offset, 10)
	}
	if cmd.Expires.IsZero() {
		at := rec.Time
		if at.IsZero() || at.Unix() <= 0 {
			at = time.Now()
		}
		cmd.Expires = at.Add(ttl)
	}
	return cmd
}

// enqueue adds a command to its device's queue, or settles it at once. It
// returns false when ctx is done.
func (d *Downlink) enqueue(ctx context.Context, pc *pendingCmd) bool {
	d.mu.Lock()
	if ps := d.parts[pc.partition]; ps != nil {
		ps.add(pc.offset)
	}
	if d.settled.has(pc.cmd.ID) {
		d.mu.Unlock()
		d.skipped.Add(1)
		d.markDone(pc.partition, pc.offset)
		return true
	}
	if pc.cmd.Device == "" {
		d.mu.Unlock()
		return d.finish(ctx, pc, CommandFailed, "command record has no key: the key must be the device id")
	}
	var evicted *pendingCmd
	if d.arrival.Len() >= d.opts.MaxQueued {
		for e := d.arrival.Front(); e != nil; e = e.Next() {
			old := e.Value.(*pendingCmd)
			if dq := d.devices[old.cmd.Device]; dq != nil && dq.busy && dq.cmds[0] == old {
				continue
			}
			evicted = old
			d.removeLocked(old)
			break
		}
	}
	dq := d.devices[pc.cmd.Device]
	if dq == nil {
		dq = &deviceQueue{}
		d.devices[pc.cmd.Device] = dq
	}
	dq.cmds = append(dq.cmds, pc)
	pc.elem = d.arrival.PushBack(pc)
	d.mu.Unlock()
	d.poke()
	if evicted != nil {
		d.log.Warn("downlink queue full; failing the oldest waiting command", "device", evicted.cmd.Device, "command", evicted.cmd.ID, "max_queued", d.opts.MaxQueued)
		return d.finish(ctx, evicted, CommandFailed, fmt.Sprintf("downlink queue full (downlink.max_queued %d)", d.opts.MaxQueued))
	}
	return true
}

func (d *Downlink) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// removeLocked takes pc out of the queues; d.mu is held.
func (d *Downlink) removeLocked(pc *pendingCmd) {
	if pc.elem == nil {
		return
	}
	d.arrival.Remove(pc.elem)
	pc.elem = nil
	dq := d.devices[pc.cmd.Device]
	if dq == nil {
		return
	}
	for i, x := range dq.cmds {
		if x == pc {
			dq.cmds = append(dq.cmds[:i], dq.cmds[i+1:]...)
			break
		}
	}
	if len(dq.cmds) == 0 && !dq.busy {
		delete(d.devices, pc.cmd.Device)
	}
}

// expiryStagger spreads "expired" reports of several gateways holding the
// same command, so the first one's status reaches the others before they
// report too.
const expiryStagger = 3 * time.Second

func (d *Downlink) stagger(cmdID string) time.Duration {
	h := fnv.New32a()
	h.Write([]byte(d.gatewayID))
	h.Write([]byte{0})
	h.Write([]byte(cmdID))
	return time.Duration(h.Sum32()%1000) * expiryStagger / 1000
}

// dispatch hands devices with waiting commands to workers, and reports
// commands that expired, until ctx is done.
func (d *Downlink) dispatch(ctx context.Context) {
	sem := make(chan struct{}, d.opts.Workers)
	var workers sync.WaitGroup
	defer workers.Wait()
	tick := time.NewTicker(d.opts.RetryInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-tick.C:
		}
		now := time.Now()
		var expired []*pendingCmd
		var ready []string
		d.mu.Lock()
		for e := d.arrival.Front(); e != nil; e = e.Next() {
			pc := e.Value.(*pendingCmd)
			if now.After(pc.cmd.Expires.Add(d.stagger(pc.cmd.ID))) {
				if dq := d.devices[pc.cmd.Device]; dq == nil || !dq.busy || dq.cmds[0] != pc {
					expired = append(expired, pc)
				}
			}
		}
		for _, pc := range expired {
			d.removeLocked(pc)
		}
		for dev, dq := range d.devices {
			if !dq.busy && len(dq.cmds) > 0 && !now.Before(dq.after) {
				ready = append(ready, dev)
			}
		}
		d.mu.Unlock()
		for _, pc := range expired {
			if d.settledID(pc.cmd.ID) {
				d.skipped.Add(1)
				d.markDone(pc.partition, pc.offset)
				continue
			}
			if !d.finish(ctx, pc, CommandExpired, "device did not connect before "+pc.cmd.Expires.UTC().Format(time.RFC3339)) {
				return
			}
		}
		for _, dev := range ready {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			d.mu.Lock()
			dq := d.devices[dev]
			if dq == nil || dq.busy || len(dq.cmds) == 0 {
				d.mu.Unlock()
				<-sem
				continue
			}
			dq.busy = true
			d.mu.Unlock()
			workers.Go(func() {
				defer func() { <-sem }()
				d.deliverDevice(ctx, dev)
			})
		}
	}
}

func (d *Downlink) settledID(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled.has(id)
}

// deliverDevice delivers dev's waiting commands in order until none is
// left, the device is not connected here, or an attempt fails.
func (d *Downlink) deliverDevice(ctx context.Context, dev string) {
	release := func(after time.Time) {
		d.mu.Lock()
		if dq := d.devices[dev]; dq != nil {
			dq.busy = false
			dq.after = after
			if len(dq.cmds) == 0 {
				delete(d.devices, dev)
			}
		}
		d.mu.Unlock()
	}
	for {
		d.mu.Lock()
		dq := d.devices[dev]
		if dq == nil || len(dq.cmds) == 0 {
			d.mu.Unlock()
			release(time.Time{})
			return
		}
		pc := dq.cmds[0]
		d.mu.Unlock()
		if time.Now().After(pc.cmd.Expires) {
			// Not delivered past its expiry; dispatch reports it.
			release(time.Now().Add(d.opts.RetryInterval))
			return
		}
		err := d.deliverOnce(ctx, pc.cmd)
		if ctx.Err() != nil {
			release(time.Time{})
			return
		}
		switch {
		case err == nil:
			d.mu.Lock()
			d.removeLocked(pc)
			d.mu.Unlock()
			if !d.finish(ctx, pc, CommandDelivered, "") {
				release(time.Time{})
				return
			}
		case errors.Is(err, ErrNotConnected):
			release(time.Now().Add(d.opts.RetryInterval))
			return
		default:
			pc.attempts++
			d.log.Debug("command delivery failed", "device", dev, "command", pc.cmd.ID, "attempt", pc.attempts, "error", err)
			if pc.attempts < d.opts.MaxAttempts {
				release(time.Now().Add(d.opts.RetryInterval))
				return
			}
			d.mu.Lock()
			d.removeLocked(pc)
			d.mu.Unlock()
			if !d.finish(ctx, pc, CommandFailed, err.Error()) {
				release(time.Time{})
				return
			}
		}
	}
}

// deliverOnce offers cmd to each target in turn. It returns nil once one
// delivered it, ErrNotConnected when the device is connected to none, or
// the error of a target the device is connected to.
func (d *Downlink) deliverOnce(ctx context.Context, cmd Command) error {
	var failed error
	for _, t := range d.targets {
		dctx, cancel := context.WithTimeout(ctx, d.opts.DeliverTimeout)
		err := t.Deliver(dctx, cmd)
		cancel()
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrNotConnected) && failed == nil {
			failed = err
		}
	}
	if failed != nil {
		return failed
	}
	return ErrNotConnected
}

// finish reports pc's terminal status (pc is already out of the queues).
// It returns false when ctx is done before the status could be queued.
func (d *Downlink) finish(ctx context.Context, pc *pendingCmd, status, errText string) bool {
	d.mu.Lock()
	d.settled.add(pc.cmd.ID)
	d.mu.Unlock()
	switch status {
	case CommandDelivered:
		d.delivered.Add(1)
	case CommandExpired:
		d.expired.Add(1)
	case CommandFailed:
		d.failed.Add(1)
	}
	attempts := pc.attempts
	if status == CommandDelivered {
		attempts++
	}
	it := statusItem{write: true, partition: pc.partition, offset: pc.offset, status: CommandStatus{
		CommandID: pc.cmd.ID, Device: pc.cmd.Device, Status: status, At: time.Now().UTC(),
		Gateway: d.gatewayID, Attempts: attempts, Error: errText}}
	select {
	case d.statusCh <- it:
		return true
	case <-ctx.Done():
		return false
	}
}

// markDone lets the committed offset pass a command.
func (d *Downlink) markDone(part int, off int64) {
	d.mu.Lock()
	if ps := d.parts[part]; ps != nil {
		ps.done[off] = true
	}
	d.mu.Unlock()
}

// writeStatuses writes status records in batches until statusCh is closed
// and drained, or ctx is done. A command counts as done (its offset may be
// committed) only once Kafka acknowledged its status.
func (d *Downlink) writeStatuses(ctx context.Context) {
	batch := make([]statusItem, 0, 512)
	for {
		it, ok := <-d.statusCh
		if !ok {
			return
		}
		batch = append(batch[:0], it)
	fill:
		for len(batch) < cap(batch) {
			select {
			case it, ok := <-d.statusCh:
				if !ok {
					break fill
				}
				batch = append(batch, it)
			default:
				break fill
			}
		}
		msgs := make([]Message, len(batch))
		for i, it := range batch {
			v, _ := json.Marshal(it.status)
			msgs[i] = Message{Topic: d.opts.StatusTopic, Key: []byte(it.status.Device), Value: v,
				Headers: []Header{{HeaderCommandID, []byte(it.status.CommandID)}, {HeaderGateway, []byte(d.gatewayID)}}}
		}
		pending := msgs
		err := d.retry(ctx, "write command status", func() error {
			err := d.sink.Write(ctx, pending)
			var we *WriteError
			if errors.As(err, &we) {
				for j, i := range we.Permanent {
					d.log.Error("kafka refused a command status record; dropping it", "topic", d.opts.StatusTopic, "command", string(pending[i].Headers[0].Value), "error", we.Causes[j])
				}
				retry := make([]Message, 0, len(we.Retry))
				for _, i := range we.Retry {
					retry = append(retry, pending[i])
				}
				if pending = retry; len(pending) == 0 {
					return nil
				}
			}
			return err
		})
		if err != nil {
			return // ctx done: not marked done, so read again after a restart
		}
		for _, it := range batch {
			d.log.Debug("command finished", "device", it.status.Device, "command", it.status.CommandID, "status", it.status.Status)
			d.markDone(it.partition, it.offset)
		}
	}
}

// commitLoop commits each partition's watermark every second.
func (d *Downlink) commitLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.commit(ctx)
		}
	}
}

// commit stores each partition's watermark in the group, when it moved.
func (d *Downlink) commit(ctx context.Context) {
	d.mu.Lock()
	var offs []kafka.OffsetCommit
	for p, ps := range d.parts {
		if w := ps.watermark(); w != ps.committed {
			offs = append(offs, kafka.OffsetCommit{Partition: p, Offset: w})
		}
	}
	d.mu.Unlock()
	if len(offs) == 0 {
		return
	}
	resp, err := d.client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: d.opts.Group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{d.opts.Topic: offs}})
	if err != nil {
		d.log.Debug("offset commit failed", "group", d.opts.Group, "error", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range resp.Topics[d.opts.Topic] {
		if p.Error != nil {
			d.log.Warn("offset commit refused", "group", d.opts.Group, "partition", p.Partition, "error", p.Error)
			continue
		}
		for _, o := range offs {
			if o.Partition == p.Partition {
				d.parts[p.Partition].committed = o.Offset
			}
		}
	}
}

// idSet is a set of strings that forgets its oldest members past a size.
type idSet struct {
	max  int
	m    map[string]struct{}
	ring []string
	next int
}

func newIDSet(n int) *idSet { return &idSet{max: n, m: map[string]struct{}{}} }

func (s *idSet) has(id string) bool { _, ok := s.m[id]; return ok }

func (s *idSet) add(id string) {
	if s.has(id) {
		return
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, id)
	} else {
		delete(s.m, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % s.max
	}
	s.m[id] = struct{}{}
}
