package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// EgressOptions tune the egress pipeline.
type EgressOptions struct {
	// BatchRecords is the most records read from the buffer and sent to
	// Kafka in one round; default 4000.
	BatchRecords int `yaml:"batch_records"`
	// Linger is how long a Write that is not full waits, from when its
	// first record was ready, for more to join it; default 5ms (as the
	// Java producer's linger.ms since Kafka 4.0), 0 sends at once. Under
	// a light flow each record would otherwise be its own produce
	// request, which costs the broker (and the gateway) far more CPU than
	// the record; under a heavy flow Writes fill and do not wait.
	Linger *time.Duration `yaml:"linger"`
	// DLQ is the dead-letter topic; default iot.dlq.
	DLQ string `yaml:"dlq"`
	// EnrichTimeout bounds enrichment of one batch; default 100ms. When it
	// expires records go on with whatever the enricher had cached.
	EnrichTimeout time.Duration `yaml:"enrich_timeout"`
	// RetryMin and RetryMax bound the backoff between Kafka retries;
	// defaults 100ms and 2s. The maximum is also how late delivery can
	// resume after Kafka is back (a broker restarted, leaders moved).
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// Schemas maps a stream (the {stream} of devices/{device}/{stream}) to
	// a JSON Schema file its payloads must match; records that do not (or
	// are not JSON) go to the dead-letter topic with the violation in the
	// iotgw-error header. Default none: payloads are not validated.
	Schemas map[string]string `yaml:"schemas"`
}

// DefaultLinger is egress.linger's default.
const DefaultLinger = 5 * time.Millisecond

// SetDefaults fills unset fields.
func (o *EgressOptions) SetDefaults() {
	if o.BatchRecords == 0 {
		o.BatchRecords = 4000
	}
	if o.DLQ == "" {
		o.DLQ = "iot.dlq"
	}
	if o.EnrichTimeout == 0 {
		o.EnrichTimeout = 100 * time.Millisecond
	}
	if o.Linger == nil {
		d := DefaultLinger
		o.Linger = &d
	}
	if o.RetryMin == 0 {
		o.RetryMin = 100 * time.Millisecond
	}
	if o.RetryMax == 0 {
		o.RetryMax = 2 * time.Second
	}
}

// Validate reports the first invalid field by its config key.
func (o *EgressOptions) Validate() error {
	if o.BatchRecords < 1 || o.BatchRecords > 100000 {
		return fmt.Errorf("egress.batch_records: %d is outside 1..100000", o.BatchRecords)
	}
	if err := ValidTopicName(o.DLQ); err != nil {
		return fmt.Errorf("egress.dlq: %w", err)
	}
	if o.RetryMin <= 0 {
		return errors.New("egress.retry_min: must be positive")
	}
	if o.RetryMax < o.RetryMin {
		return fmt.Errorf("egress.retry_max: %s is less than egress.retry_min %s", o.RetryMax, o.RetryMin)
	}
	if o.EnrichTimeout <= 0 {
		return errors.New("egress.enrich_timeout: must be positive")
	}
	if o.Linger != nil && (*o.Linger < 0 || *o.Linger > time.Second) {
		return fmt.Errorf("egress.linger: %s is outside 0..1s", *o.Linger)
	}
	if _, err := compileSchemas(o.Schemas); err != nil {
		return err
	}
	return nil
}

// EgressStats are the pipeline's counters since start.
type EgressStats struct {
	Delivered   uint64    `json:"delivered"`    // records acknowledged by Kafka
	DeadLetters uint64    `json:"dead_letters"` // records sent to the DLQ
	Invalid     uint64    `json:"invalid"`      // records whose payload failed their stream's schema (also counted in DeadLetters)
	Retries     uint64    `json:"retries"`      // Write calls that had to be retried
	Batches     uint64    `json:"batches"`
	LastError   string    `json:"last_error"`
	KafkaUp     bool      `json:"kafka_up"` // the last Write succeeded
	LastAck     time.Time `json:"last_ack"` // when Kafka last acknowledged a batch
}

// Pipeline moves records from the Buffer to the Sink: read, decode, enrich,
// route, write, and commit only what Kafka acknowledged. One batch is in
// flight at a time, which is what keeps each device's order through retries.
type Pipeline struct {
	opts      EgressOptions
	buf       Buffer
	enrich    Enricher
	router    *Router
	sink      Sink
	schemas   *schemaSet
	schemaErr error // a schema file that stopped compiling after Validate
	gatewayID string
	log       *slog.Logger

	// maxBatchBytes is what one produce request to a partition carries
	// (the sink's MaxBatchBytes); a Write carries up to writeRequests of
	// them (writeBytes), and the sink cuts it where one partition's share
	// would not fit one request.
	maxBatchBytes, writeBytes int
	// expand is how much larger the last batch's Kafka messages were than
	// its stored records (envelope, headers); Read asks for writeBytes
	// divided by it, so a read fills one batch instead of a full one and a
	// small remainder that costs a round trip of its own. Only prepare
	// touches it.
	expand float64

	// arena holds the messages prepare builds (only prepare builds with
	// it; send recycles what a written batch held).
	arena arena
	// recs, ptrs and bad are build's, kept from one build to the next:
	// at 4000 records they are a megabyte to allocate and clear.
	recs []Record
	ptrs []*Record
	bad  []error
	// batchMem holds batches' message and received_at slices for reuse
	// (*batchSlices), from send back to build.
	batchMem sync.Pool
	// mergeMsgs and mergeReceived are the slices of the batches merge
	// makes, kept by the writer goroutine from one Write to the next.
	mergeMsgs     []Message
	mergeReceived []int64
	// lingerTimer is the writer goroutine's timer for linger.
	lingerTimer *time.Timer

	// observer, when set, is told each write's duration and each
	// record's delivery latency (the gateway's /metrics histograms).
	observer EgressObserver

	delivered, deadLetters, invalid, retries, batches atomic.Uint64
	kafkaUp                                           atomic.Bool
	lastAck                                           atomic.Int64
	lastErr                                           atomic.Value // string
}

// NewPipeline wires the stages; enrich may be nil.
func NewPipeline(opts EgressOptions, buf Buffer, enrich Enricher, router *Router, sink Sink, maxBatchBytes int, gatewayID string, logger *slog.Logger) *Pipeline {
	opts.SetDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	schemas, err := compileSchemas(opts.Schemas)
	return &Pipeline{opts: opts, buf: buf, enrich: enrich, router: router, sink: sink, schemas: schemas, schemaErr: err,
		maxBatchBytes: maxBatchBytes, writeBytes: maxBatchBytes * writeRequests, expand: 2, gatewayID: gatewayID, log: logger.With("component", "egress")}
}

// writeRequests is how many produce requests' worth of records one Write
// may carry. One Write is in flight at a time (for order), so a Write's
// round trip is paid per Write: a Write that spans the topics' partitions
// carries more records for the same wait. Across 9 partitions, kafka-go
// writing 4000-record batches used about a quarter less CPU per record
// (producer and broker together) than batches cut at one request's worth
// (1 MB, about 1200 of the gateway's records), at 1.6 times the rate.
const writeRequests = 4

// EgressObserver receives egress timings. Its methods are called from the
// pipeline's writer goroutine and must not block.
type EgressObserver interface {
	// KafkaWrite is one Sink.Write that succeeded or failed, with its
	// message count.
	KafkaWrite(took time.Duration, msgs int, err error)
	// Delivered is one record acknowledged by Kafka (or by the DLQ), with
	// the time since the gateway received it.
	Delivered(latency time.Duration)
}

// SetObserver sets the observer; call it before Run.
func (p *Pipeline) SetObserver(o EgressObserver) { p.observer = o }

// Stats returns the counters.
func (p *Pipeline) Stats() EgressStats {
	s := EgressStats{
		Delivered: p.delivered.Load(), DeadLetters: p.deadLetters.Load(), Invalid: p.invalid.Load(),
		Retries: p.retries.Load(), Batches: p.batches.Load(), KafkaUp: p.kafkaUp.Load(),
	}
	if v, ok := p.lastErr.Load().(string); ok {
		s.LastError = v
	}
	if ns := p.lastAck.Load(); ns != 0 {
		s.LastAck = time.Unix(0, ns)
	}
	return s
}

// Run delivers until ctx is done or the buffer is closed. It returns nil on
// a clean stop; records read but not yet acknowledged stay uncommitted and
// are delivered again on the next start.
//
// Two goroutines share the work: one reads the buffer as records become
// durable and prepares batches (decode, enrich, route, build), the other
// writes one Write at a time and commits it. Batches keep buffer order from
// one to the other and only one Write is in flight to Kafka, so preparing
// ahead changes nothing about order.
//
// The reader does not wait for the writer: while a Write is in flight it
// builds what arrives into small batches, and when the Write returns the
// writer sends every batch built meanwhile (up to writeBytes and
// egress.batch_records) as the next Write. So the CPU work of building
// overlaps the Kafka round trip, and a record that arrives during a Write
// still goes out with the very next one. The reader stays about two
// Writes' worth ahead (prepareAhead): with a backlog it reads full batches
// and the writer takes one at a time.
func (p *Pipeline) Run(ctx context.Context) error {
	if p.schemaErr != nil {
		return p.schemaErr
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	q := newBatchQueue(prepareAhead * p.writeBytes)
	done := make(chan struct{})
	var prepErr error
	go func() {
		defer close(done)
		defer q.close()
		prepErr = p.prepare(pctx, q)
	}()
	var err error
	var taken []batch
	for {
		var ok bool
		var size, msgs int
		taken, size, msgs, ok = q.take(ctx, p.writeBytes, p.opts.BatchRecords, taken[:0])
		if !ok {
			break
		}
		if *p.opts.Linger > 0 {
			taken = p.linger(ctx, q, taken, size, msgs)
		}
		b := taken[0]
		if len(taken) > 1 {
			b = p.merge(taken)
		}
		err = p.send(ctx, b)
		clear(taken) // the batches' memory is reused or the collector's now
		if err != nil {
			break
		}
	}
	stop()
	<-done
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil:
		return err
	}
	return prepErr
}

// linger waits, while taken (size bytes, msgs messages) is less than a
// full Write, until its first batch is egress.linger old, and takes the
// batches built meanwhile that fit. It returns early when the Write
// fills, or the queue closes, or ctx is done.
func (p *Pipeline) linger(ctx context.Context, q *batchQueue, taken []batch, size, msgs int) []batch {
	deadline := taken[0].built.Add(*p.opts.Linger)
	for {
		var full bool
		taken, size, msgs, full = q.takeMore(taken, size, msgs, p.writeBytes, p.opts.BatchRecords)
		wait := time.Until(deadline)
		if full || wait <= 0 {
			return taken
		}
		if p.lingerTimer == nil {
			p.lingerTimer = time.NewTimer(wait)
		} else {
			p.lingerTimer.Reset(wait)
		}
		select {
		case <-q.added:
			p.lingerTimer.Stop()
		case <-p.lingerTimer.C:
		case <-ctx.Done():
			p.lingerTimer.Stop()
			return taken
		}
	}
}

// prepareAhead is how many Writes' worth of built messages the reader may
// hold ready beyond the Write in flight before it stops reading (one Read
// more may pass it).
const prepareAhead = 2

// batch is a run of messages ready for Kafka, in buffer order. through is
// the last buffer offset it accounts for.
type batch struct {
	msgs     []Message
	received []int64 // each message's record's received_at, Unix ns
	size     int     // the messages' MessageSize total
	through  Offset
	blocks   []retired // arena blocks to recycle once the batch is written
	slabs    [][]byte  // Reads' slabs (slabReuser), on each Read's last batch
	merged   bool      // made by merge: its slices are mergeMsgs and mergeReceived
	built    time.Time // when it was queued (linger)
}

// batchSlices are a batch's slices, kept for the next.
type batchSlices struct {
	msgs     []Message
	received []int64
}

// merge joins batches taken together into one Write's batch, in order.
// The parts' slices go back for reuse at once; their arena blocks and
// slabs go with the merged batch until Kafka acknowledged it. The merged
// batch's slices are the writer's own (mergeMsgs), kept from one merge to
// the next.
func (p *Pipeline) merge(parts []batch) batch {
	n := 0
	for _, b := range parts {
		n += len(b.msgs)
	}
	m := batch{merged: true, msgs: slices.Grow(p.mergeMsgs[:0], n)}
	if p.observer != nil {
		m.received = slices.Grow(p.mergeReceived[:0], n)
	}
	p.mergeMsgs, p.mergeReceived = nil, nil // until reuse gives them back
	for _, b := range parts {
		m.msgs = append(m.msgs, b.msgs...)
		m.received = append(m.received, b.received...)
		m.size += b.size
		m.through = b.through
		m.blocks = append(m.blocks, b.blocks...)
		m.slabs = append(m.slabs, b.slabs...)
		clear(b.msgs)
		p.batchMem.Put(&batchSlices{msgs: b.msgs[:0], received: b.received[:0]})
	}
	return m
}

// batchSlices returns empty slices for a batch's messages and receive
// times: an acknowledged batch's when one has room for n messages, else
// new ones.
func (p *Pipeline) batchSlices(n int) ([]Message, []int64) {
	if v, ok := p.batchMem.Get().(*batchSlices); ok && cap(v.msgs) >= n {
		return v.msgs, v.received
	}
	msgs := make([]Message, 0, n)
	if p.observer != nil {
		return msgs, make([]int64, 0, n)
	}
	return msgs, nil
}

// prepare reads the buffer and queues batches until ctx is done (nil) or
// the buffer fails. Read's maxBytes is the Kafka batch limit divided by
// how much records grew into messages last time; batches are also cut
// while they are built, should they grow more.
func (p *Pipeline) prepare(ctx context.Context, q *batchQueue) error {
	for {
		if err := q.waitRoom(ctx); err != nil {
			return nil
		}
		maxBytes := max(int(float64(p.writeBytes)/p.expand), 1)
		entries, err := p.buf.Read(ctx, p.opts.BatchRecords, maxBytes)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return nil
			}
			return fmt.Errorf("read buffer: %w", err)
		}
		stored := 0
		for _, e := range entries {
			stored += len(e.Data)
		}
		sr, reuse := p.buf.(slabReuser)
		var slabs [][]byte
		if reuse {
			slabs = sr.TakeSlabs()
		}
		built, err := p.build(ctx, entries, slabs, q)
		if reuse {
			sr.RecycleEntries(entries) // what was built keeps only their data
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if stored > 0 && built > 0 {
			p.expand = max(float64(built)/float64(stored), 1)
		}
	}
}

// batchQueue hands built batches from the reader to the writer, in order.
// The reader reads only while it holds less than limit bytes of messages
// (waitRoom), so it holds at most limit plus one Read's batches.
type batchQueue struct {
	limit  int
	mu     sync.Mutex
	items  []batch
	bytes  int
	closed bool
	added  chan struct{} // signalled on push and close; capacity 1
	freed  chan struct{} // signalled on take; capacity 1
}

func newBatchQueue(limit int) *batchQueue {
	return &batchQueue{limit: limit, added: make(chan struct{}, 1), freed: make(chan struct{}, 1)}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// waitRoom blocks while the queue holds limit bytes or more.
func (q *batchQueue) waitRoom(ctx context.Context) error {
	for {
		q.mu.Lock()
		room := q.bytes < q.limit
		q.mu.Unlock()
		if room {
			return nil
		}
		select {
		case <-q.freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// push queues b.
func (q *batchQueue) push(b batch) {
	b.built = time.Now()
	q.mu.Lock()
	q.items = append(q.items, b)
	q.bytes += b.size
	q.mu.Unlock()
	signal(q.added)
}

// close says no batch will follow; take returns false once the queue is
// empty.
func (q *batchQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.added)
}

// take waits for a batch and returns it, with the batches after it as long
// as together they stay within maxBytes and maxMsgs, appended to into,
// and their total size and message count. ok is false when ctx is done,
// or the queue is closed and empty.
func (q *batchQueue) take(ctx context.Context, maxBytes, maxMsgs int, into []batch) (_ []batch, size, msgs int, ok bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			into, size, msgs, _ = q.popLocked(into, 0, 0, maxBytes, maxMsgs, true)
			q.mu.Unlock()
			signal(q.freed)
			return into, size, msgs, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return into, 0, 0, false
		}
		select {
		case <-q.added:
		case <-ctx.Done():
			return into, 0, 0, false
		}
	}
}

// takeMore appends to into (of size bytes and msgs messages) the queued
// batches that fit within maxBytes and maxMsgs, in order. full is true
// when the next batch does not fit, or nothing more could, or the queue
// is closed: the Write should go now.
func (q *batchQueue) takeMore(into []batch, size, msgs, maxBytes, maxMsgs int) (_ []batch, _, _ int, full bool) {
	q.mu.Lock()
	into, size, msgs, k := q.popLocked(into, size, msgs, maxBytes, maxMsgs, false)
	full = len(q.items) > 0 || size >= maxBytes || msgs >= maxMsgs || q.closed
	q.mu.Unlock()
	if k > 0 {
		signal(q.freed)
	}
	return into, size, msgs, full
}

// popLocked moves the queued batches that fit, with size and msgs, within
// maxBytes and maxMsgs from the queue's head to into, the first one even
// if it does not fit when first is set, and returns the new totals and
// how many it moved. q.mu is held.
func (q *batchQueue) popLocked(into []batch, size, msgs, maxBytes, maxMsgs int, first bool) (_ []batch, _, _, k int) {
	start := size
	for k < len(q.items) && (first && k == 0 || size+q.items[k].size <= maxBytes && msgs+len(q.items[k].msgs) <= maxMsgs) {
		size += q.items[k].size
		msgs += len(q.items[k].msgs)
		k++
	}
	into = append(into, q.items[:k]...)
	clear(q.items[:k])
	q.items = append(q.items[:0], q.items[k:]...)
	q.bytes -= size - start
	return into, size, msgs, k
}

// send writes b until Kafka acknowledged every message (or it went to the
// DLQ) and commits it. It fails only when ctx is done or the commit fails.
func (p *Pipeline) send(ctx context.Context, b batch) error {
	if len(b.msgs) > 0 {
		if err := p.write(ctx, b.msgs); err != nil {
			return err
		}
	}
	if b.through == 0 {
		return nil
	}
	if err := p.buf.Commit(b.through); err != nil {
		return fmt.Errorf("commit buffer at %d: %w", b.through, err)
	}
	if p.observer != nil {
		now := time.Now().UnixNano()
		for _, r := range b.received {
			p.observer.Delivered(time.Duration(now - r))
		}
	}
	p.reuse(b)
	return nil
}

// reuse takes back the memory of b, which Kafka acknowledged: its arena
// blocks and its slices. Every batch before it was acknowledged too. Only
// a sink that says it keeps nothing of a Write's messages (settler) gets
// its memory reused.
func (p *Pipeline) reuse(b batch) {
	s, ok := p.sink.(settler)
	if !ok {
		return
	}
	if s.Settled() {
		for _, r := range b.blocks {
			p.arena.recycle(r)
		}
		if sr, ok := p.buf.(slabReuser); ok && len(b.slabs) > 0 {
			sr.RecycleSlabs(b.slabs)
		}
	}
	clear(b.msgs) // drop the references; the sink copied what it sends
	if b.merged {
		p.mergeMsgs, p.mergeReceived = b.msgs[:0], b.received[:0]
		return
	}
	p.batchMem.Put(&batchSlices{msgs: b.msgs[:0], received: b.received[:0]})
}

// settler is a Sink that keeps nothing of the messages of a Write once it
// returned, except while it is not settled: KafkaSink, whose Write may
// give up at its deadline and leave batches queued in kafka-go. While it
// is not settled no arena block is recycled (the blocks handed to a batch
// may hold messages of earlier batches too), and the garbage collector
// takes them instead.
type settler interface{ Settled() bool }

// slabReuser is a Buffer whose Read copies records into slabs it can fill
// again (buffer.Log): the pipeline takes a Read's slabs, puts them on the
// last batch built from it (raw messages and dead letters share the
// entries' data), and gives them back with the arena's blocks. The slice of
// entries itself goes back as soon as the batches are built, before the
// next Read (RecycleEntries).
type slabReuser interface {
	TakeSlabs() [][]byte
	RecycleSlabs([][]byte)
	RecycleEntries([]Entry)
}

// build turns entries into batches of at most writeBytes and hands them
// on in order. It returns the messages' total size (MessageSize) once every
// batch was handed on, or ctx's error.
//
// slabs hold entries' data (Buffer slabReuser); they go on the last batch,
// after which nothing built from entries is in flight.
func (p *Pipeline) build(ctx context.Context, entries []Entry, slabs [][]byte, q *batchQueue) (int, error) {
	if cap(p.recs) < len(entries) {
		p.recs = make([]Record, len(entries))
		p.bad = make([]error, len(entries))
		p.ptrs = make([]*Record, 0, len(entries))
	}
	recs, bad, ptrs := p.recs[:len(entries)], p.bad[:len(entries)], p.ptrs[:0]
	defer func() {
		// Nothing built keeps a reference to the records themselves
		// (messages copy what they need, or share Read's data).
		clear(recs)
		clear(ptrs)
	}()
	for i, e := range entries {
		recs[i], bad[i] = Record{}, nil
		// Read's data is ours: the record keeps views into it.
		if err := decodeOwned(e.Data, &recs[i]); err != nil {
			bad[i] = err
			recs[i] = Record{ID: fmt.Sprintf("corrupt-%d", e.Offset), Payload: e.Data, ReceivedAt: time.Now().UTC()}
			continue
		}
		ptrs = append(ptrs, &recs[i])
	}
	if p.enrich != nil && len(ptrs) > 0 {
		ectx, cancel := context.WithTimeout(ctx, p.opts.EnrichTimeout)
		if err := p.enrich.Enrich(ectx, ptrs); err != nil {
			p.log.Warn("enrichment failed; delivering without", "error", err)
		}
		cancel()
	}

	// cur's slices are taken when its first message comes: a batch pushed
	// last makes no empty one after it.
	var cur batch
	total := 0
	flush := func() {
		if len(cur.msgs) == 0 && cur.through == 0 {
			return
		}
		if r := p.arena.cut(); len(r.bytes) > 0 || len(r.headers) > 0 {
			cur.blocks = append(cur.blocks[:0], r)
		}
		q.push(cur)
		cur = batch{}
	}
	for i := range recs {
		rec := &recs[i]
		off := entries[i].Offset
		m, err := p.message(ctx, rec, bad[i], off)
		if err != nil {
			return 0, err
		}
		if m.Topic == p.opts.DLQ {
			rejected, err := p.ensureTopic(ctx, TopicSpec{Name: p.opts.DLQ})
			if err != nil {
				return 0, err
			}
			if rejected != nil {
				// Deliver what came before, then wait for the DLQ.
				flush()
				if err := p.ensureDLQ(ctx); err != nil {
					return 0, err
				}
			}
			p.deadLetters.Add(1)
		}
		ms := MessageSize(&m)
		if len(cur.msgs) > 0 && cur.size+ms > p.writeBytes {
			flush()
		}
		if cur.msgs == nil {
			cur.msgs, cur.received = p.batchSlices(len(recs) - i)
		}
		cur.msgs = append(cur.msgs, m)
		if p.observer != nil {
			cur.received = append(cur.received, rec.ReceivedAt.UnixNano())
		}
		cur.size += ms
		total += ms
		cur.through = off
	}
	cur.slabs = slabs
	flush()
	return total, nil
}

// message routes one record: its Kafka message, or a dead letter when the
// record is corrupt, unroutable, invalid for its stream's schema, or bound
// for a topic that cannot exist. It fails only when ctx is done.
func (p *Pipeline) message(ctx context.Context, rec *Record, corrupt error, off Offset) (Message, error) {
	if corrupt != nil {
		p.log.Error("corrupt record in buffer; sent to dead-letter topic", "offset", off, "error", corrupt)
		return DeadLetter(rec, p.opts.DLQ, "", corrupt, p.gatewayID, off), nil
	}
	rt, err := p.router.Route(rec)
	if err != nil {
		p.log.Debug("unroutable record to dead-letter topic", "device", rec.Device, "topic", rec.Topic, "error", err)
		return DeadLetter(rec, p.opts.DLQ, "", err, p.gatewayID, off), nil
	}
	if err := p.schemas.validate(rec); err != nil {
		p.invalid.Add(1)
		p.log.Debug("invalid payload to dead-letter topic", "device", rec.Device, "topic", rec.Topic, "error", err)
		return DeadLetter(rec, p.opts.DLQ, rt.Topic, err, p.gatewayID, off), nil
	}
	rejected, err := p.ensureTopic(ctx, rt.Spec)
	if err != nil {
		return Message{}, err
	}
	if rejected != nil {
		p.log.Debug("record for an unavailable topic to dead-letter topic", "device", rec.Device, "topic", rt.Topic, "error", rejected)
		return DeadLetter(rec, p.opts.DLQ, rt.Topic, rejected, p.gatewayID, off), nil
	}
	return buildMessage(&p.arena, rec, rt, p.gatewayID, off), nil
}

// ensureTopic retries EnsureTopic until Kafka answers. It returns the
// ErrTopicRejected answer as rejected (the record goes to the DLQ), and err
// only when ctx is done.
func (p *Pipeline) ensureTopic(ctx context.Context, spec TopicSpec) (rejected, err error) {
	// Every record asks and the sink answers from its cache: this path
	// makes no garbage. The retry loop (a closure and its message) is built
	// only when Kafka did not answer.
	switch err := p.sink.EnsureTopic(ctx, spec); {
	case err == nil:
		return nil, nil
	case errors.Is(err, ErrTopicRejected):
		return err, nil
	}
	err = p.retry(ctx, "check topic "+spec.Name, func() error {
		err := p.sink.EnsureTopic(ctx, spec)
		if errors.Is(err, ErrTopicRejected) {
			rejected = err
			return nil
		}
		return err
	})
	return rejected, err
}

// ensureDLQ waits until the dead-letter topic exists. A record bound for
// it is never dropped: while Kafka refuses the DLQ (missing with
// kafka.create_topics false, not authorized) egress stops at that record
// and retries, the buffer keeps everything after it, and the error is on
// /status and in the log. It fails only when ctx is done.
func (p *Pipeline) ensureDLQ(ctx context.Context) error {
	return p.retry(ctx, "dead-letter topic", func() error {
		rejected, err := p.ensureTopic(ctx, TopicSpec{Name: p.opts.DLQ})
		if err != nil {
			return err
		}
		if rejected != nil {
			p.log.Error("dead-letter topic unavailable: egress waits, records stay in the buffer", "dlq", p.opts.DLQ, "error", rejected)
			return rejected
		}
		return nil
	})
}

// write sends msgs until all are acknowledged, retrying only what failed,
// and diverting what Kafka rejects permanently to the dead-letter topic.
func (p *Pipeline) write(ctx context.Context, msgs []Message) error {
	pending := msgs
	p.batches.Add(1)
	return p.retry(ctx, "kafka write", func() error {
		start := time.Now()
		err := p.sink.Write(ctx, pending)
		if p.observer != nil {
			p.observer.KafkaWrite(time.Since(start), len(pending), err)
		}
		if err == nil {
			p.kafkaUp.Store(true)
			p.delivered.Add(uint64(len(pending)))
			p.lastAck.Store(time.Now().UnixNano())
			return nil
		}
		var we *WriteError
		if !errors.As(err, &we) {
			return err
		}
		next := make([]Message, 0, len(we.Retry)+len(we.Permanent))
		failed := map[int]bool{}
		for _, i := range we.Retry {
			failed[i] = true
		}
		var dlqRefused error
		for j, i := range we.Permanent {
			failed[i] = true
			m := pending[i]
			if m.Topic == p.opts.DLQ {
				// Never dropped: kept and retried with backoff until the
				// DLQ takes it (an operator fixes its ACL or limits).
				if dlqRefused == nil {
					dlqRefused = fmt.Errorf("dead-letter topic %s refused a record: %w", m.Topic, we.Causes[j])
				}
				next = append(next, m)
				continue
			}
			if err := p.ensureDLQ(ctx); err != nil {
				return err
			}
			dl := Message{Topic: p.opts.DLQ, Key: m.Key, Value: m.Value, Offset: m.Offset,
				Headers: append(append([]Header(nil), m.Headers...), Header{HeaderError, []byte(we.Causes[j].Error())}, Header{HeaderDLQTopic, []byte(m.Topic)})}
			if len(dl.Value) > p.maxBatchBytes/2 {
				dl.Value = dl.Value[:p.maxBatchBytes/2]
				dl.Headers = append(dl.Headers, Header{"iotgw-truncated", []byte("true")})
			}
			p.deadLetters.Add(1)
			next = append(next, dl)
		}
		// The sink may list retries out of order; resend in the order read.
		slices.Sort(we.Retry)
		retry := make([]Message, 0, len(we.Retry))
		for _, i := range we.Retry {
			retry = append(retry, pending[i])
		}
		p.delivered.Add(uint64(len(pending) - len(failed)))
		// Retried messages keep their relative order; dead letters go last.
		pending = append(retry, next...)
		if len(pending) == 0 {
			return nil
		}
		if len(we.Retry) == 0 && dlqRefused == nil {
			// Only new dead letters left: send them without a backoff.
			return errRetryNow
		}
		if dlqRefused != nil {
			p.log.Error("dead-letter topic refused records: egress waits, records stay in the buffer", "dlq", p.opts.DLQ, "error", dlqRefused)
			return dlqRefused
		}
		return err
	})
}

var errRetryNow = errors.New("retry now")

// retry runs fn until it succeeds or ctx is done, with capped exponential
// backoff. It records Kafka's state for the status page.
func (p *Pipeline) retry(ctx context.Context, what string, fn func() error) error {
	backoff := p.opts.RetryMin
	failures := 0
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil {
			if failures > 0 {
				// Only an answer from Kafka says it is up: a cached topic
				// check succeeding on the first try says nothing.
				p.log.Info("kafka reachable again", "after_attempts", attempt)
				p.kafkaUp.Store(true)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errRetryNow) {
			continue
		}
		failures++
		p.kafkaUp.Store(false)
		p.retries.Add(1)
		p.lastErr.Store(err.Error())
		if attempt == 0 || attempt%20 == 0 {
			p.log.Warn(what+" failed; buffering and retrying", "error", err, "attempt", attempt+1, "backoff", backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, p.opts.RetryMax)
	}
}
