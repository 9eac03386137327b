package gateway

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/protocol/rawproduce"
)

// This file is KafkaSink's producer: how one chunk of a Write becomes
// produce requests, each carrying one record batch (encoded by
// appendRecordBatch) for every partition it holds. kafka-go's Writer sends
// one request per partition; the Java client sends one per broker. This
// sends one per broker for small chunks and, for large ones, splits a
// broker's partitions over up to requestsPerBroker requests, balanced by
// size: a broker handles one connection's request at a time, so one large
// request leaves its other request threads idle (kafka-go's Transport
// sends concurrent requests on connections of their own). On the gateway's
// three topics of three partitions a large Write is three requests where
// the Writer sent nine; docs/kafka.md#why-not-kafka-gos-writer has the
// measurements.

// requestsPerBroker is how many requests one chunk may send to one broker
// at once, and splitMinBytes how large a partition's batch must be to get
// a request of its own rather than join the smallest one. Writing 4000
// records at a time to one broker, three topics of three partitions, one
// request per broker went at 351–498k records/s, three at 433–523k
// (alternated, five pairs), for the same CPU in client and broker; nine
// (one per partition) was no faster and cost the client about a tenth more.
const (
	requestsPerBroker = 3
	splitMinBytes     = 64 << 10
)

// topicLayout is one topic's partitions as the transport's metadata has
// them, looked up once per Write.
type topicLayout struct {
	parts   []int   // 0..n-1, for the balancer
	leaders []int32 // leader broker id by partition; -1 when it has none
	bytes   []int   // per partition, in the chunk being cut
	err     error   // the lookup's error: the topic's messages are not sent
}

// layout returns topic's layout for this Write (s.layouts is cleared when
// a Write starts, under writeMu). Like kafka-go's Writer, it asks the
// transport, which answers from its metadata cache (refreshed every
// MetadataTTL), so a topic created elsewhere or a new leader shows within
// that bound.
func (s *KafkaSink) layout(ctx context.Context, topic string) *topicLayout {
	if l, ok := s.layouts[topic]; ok {
		return l
	}
	l := &topicLayout{}
	s.layouts[topic] = l
	r, err := s.rt.RoundTrip(ctx, s.client.Addr, &metadataAPI.Request{TopicNames: []string{topic}})
	if err != nil {
		l.err = err
		return l
	}
	l.err = kafka.UnknownTopicOrPartition
	for _, t := range r.(*metadataAPI.Response).Topics {
		if t.Name != topic {
			continue
		}
		if t.ErrorCode != 0 {
			l.err = kafka.Error(t.ErrorCode)
			break
		}
		n := len(t.Partitions)
		l.parts, l.leaders, l.bytes = make([]int, n), make([]int32, n), make([]int, n)
		for i := range l.parts {
			l.parts[i], l.leaders[i] = i, -1
		}
		for _, p := range t.Partitions {
			if p.PartitionIndex >= 0 && int(p.PartitionIndex) < n {
				l.leaders[p.PartitionIndex] = p.LeaderID
			}
		}
		l.err = nil
		if n == 0 {
			l.err = kafka.UnknownTopicOrPartition
		}
		break
	}
	return l
}

// partition is m's partition: murmur2 of the key over the topic's
// partitions, the Java client's default partitioner, so Kafka Streams and
// ksqlDB joins on device id co-partition with the gateway's records. It is
// -1 when the topic's layout is unknown.
func (s *KafkaSink) partition(ctx context.Context, m *kafka.Message) int32 {
	l := s.layout(ctx, m.Topic)
	if l.err != nil {
		return -1
	}
	return int32(s.murmur.Balance(*m, l.parts...))
}

// chunkEnd returns the end of the chunk that starts at start: as many
// messages as fit with no partition's share over the batch limit (one
// record batch per partition per request; the broker refuses a batch over
// its message.max.bytes). The first message is always taken: one too large
// for the limit alone was refused before. Messages of a topic whose layout
// is unknown count together, as one more partition: their chunk fails
// whole anyway.
func (s *KafkaSink) chunkEnd(ctx context.Context, km []kafka.Message, parts []int32, sizes []int, start int) int {
	for _, l := range s.layouts {
		clear(l.bytes)
	}
	unknown := 0
	limit := int(s.opts.MaxMessageBytes)
	end := start
	for ; end < len(km); end++ {
		c := &unknown
		if p := parts[end]; p >= 0 {
			c = &s.layout(ctx, km[end].Topic).bytes[p]
		}
		if end > start && *c+sizes[end] > limit {
			break
		}
		*c += sizes[end]
	}
	return end
}

// leaderRequest is one produce request of a chunk and, once done is
// closed, its outcome. It is owned by the goroutine that sends it until
// then: a Write that gives up at its deadline leaves it behind.
type leaderRequest struct {
	req     rawproduce.Request
	buf     *[]byte // the encoded record batches the request's partitions read
	batches []int   // indexes into the chunk's batches, in request order
	n       int     // messages it carries
	size    int     // bytes it may take, uncompressed
	errs    []error
	err     error // the whole request failed
	done    chan struct{}
}

// partitionBatch is one partition's messages in a chunk.
type partitionBatch struct {
	topic     string
	partition int32
	leader    int32
	pos       []int // positions in the chunk, in order
	size      int   // bytes its record batch may take, uncompressed
}

// produce sends one chunk and waits for Kafka's answers. It returns nil
// when every message was written, kafka.WriteErrors (an entry per
// message, nil for the written ones) when Kafka refused some or a request
// failed, and a plain error when nothing was sent (a topic's metadata) or
// the context ended first (then some may have been written: the retry
// duplicates them). Each partition's messages go in one record batch of
// one request, and no two requests carry the same partition, so sending
// them together cannot reorder a partition.
func (s *KafkaSink) produce(ctx context.Context, km []kafka.Message, parts []int32, sizes []int) error {
	if err := s.awaitLate(ctx); err != nil {
		return err
	}
	for j := range km {
		if parts[j] < 0 {
			return s.layout(ctx, km[j].Topic).err
		}
	}
	batches := s.group(ctx, km, parts)
	// Largest batches first, each to a request of its own while its
	// leader has fewer than requestsPerBroker, else to the leader's
	// smallest request.
	order := make([]int, len(batches))
	for b := range batches {
		order[b] = b
		batches[b].size = batchHeaderLen + 4
		for _, j := range batches[b].pos {
			batches[b].size += sizes[j] // at least the record's bytes (TestMessageSizeBoundsTheRecordBatch)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return batches[b].size - batches[a].size })
	var reqs []*leaderRequest
	for _, b := range order {
		var lr *leaderRequest
		n := 0
		for _, r := range reqs {
			if batches[r.batches[0]].leader == batches[b].leader {
				n++
				if lr == nil || r.size < lr.size {
					lr = r
				}
			}
		}
		if lr == nil || n < requestsPerBroker && batches[b].size >= splitMinBytes {
			lr = &leaderRequest{req: rawproduce.Request{Acks: int16(kafka.RequireAll), Timeout: int32(s.opts.WriteTimeout.Milliseconds())}, done: make(chan struct{})}
			reqs = append(reqs, lr)
		}
		lr.batches = append(lr.batches, b)
		lr.n += len(batches[b].pos)
		lr.size += batches[b].size
	}
	// Encode each request's partitions into one buffer, then point the
	// request at their bytes.
	now := time.Now().UnixMilli()
	for _, lr := range reqs {
		lr.buf = batchBufs.Get().(*[]byte)
		if cap(*lr.buf) < lr.size {
			// Once, not grown by appends, with room for the next
			// request's size to vary.
			*lr.buf = make([]byte, 0, lr.size+lr.size/4)
		}
		buf, ends := (*lr.buf)[:0], make([]int, len(lr.batches))
		for k, b := range lr.batches {
			var err error
			buf, s.scratch, err = appendRecordBatch(buf, s.scratch, km, batches[b].pos, now, s.codec)
			if err != nil {
				return fmt.Errorf("kafka write: compress a batch for %s/%d: %w", batches[b].topic, batches[b].partition, err)
			}
			ends[k] = len(buf)
		}
		*lr.buf = buf
		from := 0
		for k, b := range lr.batches {
			pb := &batches[b]
			rt := len(lr.req.Topics) - 1
			for rt >= 0 && lr.req.Topics[rt].Topic != pb.topic {
				rt--
			}
			if rt < 0 {
				lr.req.Topics = append(lr.req.Topics, rawproduce.RequestTopic{Topic: pb.topic})
				rt = len(lr.req.Topics) - 1
			}
			lr.req.Topics[rt].Partitions = append(lr.req.Topics[rt].Partitions, rawproduce.RequestPartition{
				Partition: pb.partition,
				RecordSet: protocol.RawRecordSet{Reader: bytes.NewReader(buf[from:ends[k]])},
			})
			from = ends[k]
		}
	}
	for _, lr := range reqs {
		s.send(ctx, lr, batches)
	}
	for i, lr := range reqs {
		select {
		case <-lr.done:
		case <-ctx.Done():
			// The requests not yet answered are written late or not at
			// all; the next Write waits for them (awaitLate).
			for _, r := range reqs[i:] {
				s.late = append(s.late, r.done)
			}
			return fmt.Errorf("kafka write: no answer: %w", ctx.Err())
		}
	}
	var wes kafka.WriteErrors
	for _, lr := range reqs {
		for k, b := range lr.batches {
			err := lr.err
			if err == nil {
				err = lr.errs[k]
			}
			if err == nil {
				continue
			}
			if wes == nil {
				wes = make(kafka.WriteErrors, len(km))
			}
			for _, j := range batches[b].pos {
				wes[j] = err
			}
		}
	}
	if wes == nil {
		return nil
	}
	return wes
}

// group sorts a chunk's messages into one batch per partition, in order of
// first appearance. The batches are s.batches, reused from chunk to chunk.
func (s *KafkaSink) group(ctx context.Context, km []kafka.Message, parts []int32) []partitionBatch {
	batches := s.batches[:0]
	clear(s.batchOf)
	for j := range km {
		k := topicPartition{km[j].Topic, parts[j]}
		b, ok := s.batchOf[k]
		if !ok {
			b = len(batches)
			s.batchOf[k] = b
			if b < cap(batches) {
				batches = batches[:b+1]
				batches[b].pos = batches[b].pos[:0]
			} else {
				batches = append(batches, partitionBatch{})
			}
			batches[b].topic, batches[b].partition = k.topic, k.partition
			batches[b].leader = s.layout(ctx, k.topic).leaders[k.partition]
		}
		batches[b].pos = append(batches[b].pos, j)
	}
	s.batches = batches
	return batches
}

type topicPartition struct {
	topic     string
	partition int32
}

// send starts lr's round trip. Its context is the Write's without the
// cancellation, bounded by kafka.write_timeout: a request once handed to
// kafka-go is written or fails on its own clock (the connection's
// deadline is the context's), and until then its messages count as
// outstanding (Settled).
func (s *KafkaSink) send(ctx context.Context, lr *leaderRequest, batches []partitionBatch) {
	s.outstanding.Add(int64(lr.n))
	s.inflight.Add(1)
	// What the answer is matched against, copied: the batches may be
	// reused by a later Write if this one gives up.
	want := make([]topicPartition, len(lr.batches))
	for k, b := range lr.batches {
		want[k] = topicPartition{batches[b].topic, batches[b].partition}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.WriteTimeout)
	go func() {
		defer s.inflight.Done()
		defer cancel()
		res, err := s.rt.RoundTrip(rctx, s.client.Addr, &lr.req)
		if err != nil {
			lr.err = fmt.Errorf("kafka produce: %w", err)
		} else {
			lr.errs = answers(res.(*produceAPI.Response), want)
		}
		lr.req.Topics = nil
		if err == nil {
			// Answered, so kafka-go has written all of it: the buffer
			// can carry another request. After an error it may still be
			// being written (a deadline races the connection's), so it
			// is left to the garbage collector.
			putBatchBuf(lr.buf)
		}
		lr.buf = nil
		s.outstanding.Add(-int64(lr.n))
		close(lr.done)
	}()
}

// answers maps a produce response to the partitions asked for, in order.
func answers(res *produceAPI.Response, want []topicPartition) []error {
	errs := make([]error, len(want))
	for k, tp := range want {
		errs[k] = fmt.Errorf("kafka produce: no answer for %s/%d", tp.topic, tp.partition)
		for _, t := range res.Topics {
			if t.Topic != tp.topic {
				continue
			}
			for _, p := range t.Partitions {
				if p.Partition != tp.partition {
					continue
				}
				errs[k] = nil
				if p.ErrorCode != 0 {
					errs[k] = kafka.Error(p.ErrorCode)
					if p.ErrorMessage != "" {
						errs[k] = fmt.Errorf("%w: %s", kafka.Error(p.ErrorCode), p.ErrorMessage)
					}
				}
			}
		}
	}
	return errs
}

// awaitLate waits for the requests of a Write that gave up before their
// answer: a partition's next batch must not be sent while an earlier one
// may still be written, or a late write would land after it.
func (s *KafkaSink) awaitLate(ctx context.Context) error {
	for len(s.late) > 0 {
		select {
		case <-s.late[0]:
			s.late = s.late[1:]
		case <-ctx.Done():
			return fmt.Errorf("kafka write: waiting for an earlier write's answer: %w", ctx.Err())
		}
	}
	s.late = nil
	return nil
}

// batchBufs holds encoded requests' buffers for reuse (*[]byte).
var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

// putBatchBuf keeps b for another request unless it grew past what a
// normal Write needs (egress writes carry about 4 MiB at most).
func putBatchBuf(b *[]byte) {
	if cap(*b) <= 8<<20 {
		batchBufs.Put(b)
	}
}
