package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
)

// rejectedFor is how long an ErrTopicRejected answer is reused before the
// topic is checked again, so a batch routed to a missing topic costs one
// metadata round trip, not one per record.
const rejectedFor = 10 * time.Second

type rejectedTopic struct {
	err   error
	until time.Time
}

// EnsureTopic implements Sink. With kafka.create_topics it creates a
// missing topic with spec's partitions, replication and configs (an
// existing topic is left as it is); without, it checks with an uncached
// metadata request that the topic exists. Either way the answer is kept, so
// later calls for the topic cost nothing.
func (s *KafkaSink) EnsureTopic(ctx context.Context, spec TopicSpec) error {
	s.mu.Lock()
	if s.known[spec.Name] {
		s.mu.Unlock()
		return nil
	}
	if _, ok := s.specs[spec.Name]; !ok {
		s.specs[spec.Name] = spec
	}
	if r, ok := s.rejected[spec.Name]; ok && time.Now().Before(r.until) {
		s.mu.Unlock()
		return r.err
	}
	s.mu.Unlock()

	var err error
	if *s.opts.CreateTopics {
		err = s.createTopic(ctx, spec)
	} else {
		var parts int
		if parts, err = s.topicPartitions(ctx, spec.Name); err == nil && parts == 0 {
			err = fmt.Errorf("%w: topic %s does not exist and kafka.create_topics is false (create it, or allow creation)", ErrTopicRejected, spec.Name)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		s.known[spec.Name] = true
		delete(s.rejected, spec.Name)
	case errors.Is(err, ErrTopicRejected):
		if _, again := s.rejected[spec.Name]; !again {
			s.log.Warn("kafka topic unavailable; its records go to the dead-letter topic", "topic", spec.Name, "error", err)
		}
		s.rejected[spec.Name] = rejectedTopic{err: err, until: time.Now().Add(rejectedFor)}
	}
	return err
}

func (s *KafkaSink) createTopic(ctx context.Context, spec TopicSpec) error {
	parts := spec.Partitions
	if parts == 0 {
		parts = DefaultPartitions
	}
	rf := spec.ReplicationFactor
	if rf == 0 {
		rf = -1
	}
	tc := kafka.TopicConfig{Topic: spec.Name, NumPartitions: parts, ReplicationFactor: rf}
	for k, v := range spec.Config {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	resp, err := s.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{tc}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", spec.Name, s.explain(ctx, err))
	}
	terr := resp.Errors[spec.Name]
	var ke kafka.Error
	switch {
	case terr == nil:
		s.log.Info("created kafka topic", "topic", spec.Name, "partitions", parts, "replication_factor", rf, "config", spec.Config)
		return nil
	case errors.Is(terr, kafka.TopicAlreadyExists):
		return nil
	case errors.As(terr, &ke) && topicRefusal(ke):
		// Invalid name, partitions or config, a policy, or no permission:
		// asking again gives the same answer.
		return fmt.Errorf("%w: kafka refused to create topic %s: %w", ErrTopicRejected, spec.Name, terr)
	case errors.Is(terr, kafka.InvalidReplicationFactor):
		// Kafka places replicas on the brokers alive now: with one of three
		// down a replication factor of 3 fails until it is back. Retried,
		// so a broker outage never sends records to the DLQ; a factor the
		// cluster can never reach keeps failing, loudly, with this text.
		return fmt.Errorf("create topic %s with replication factor %d: fewer brokers are alive than the factor needs (retrying): %w", spec.Name, rf, terr)
	default:
		return fmt.Errorf("create topic %s: %w", spec.Name, terr)
	}
}

// topicRefusal reports the CreateTopics answers that mean the topic can
// never be created as asked. Only these send records to the DLQ; any other
// error (a timeout, a controller moving, an unknown server error) is
// retried, since a record sent to the DLQ by a passing fault is misrouted.
func topicRefusal(err kafka.Error) bool {
	switch err {
	case kafka.InvalidTopic, kafka.InvalidPartitionNumber, kafka.InvalidReplicaAssignment, kafka.InvalidConfiguration,
		kafka.PolicyViolation, kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed, kafka.InvalidRequest:
		return true
	}
	return false
}

// topicPartitions asks a broker directly (not the producer's metadata
// cache, which may be seconds old) how many partitions topic has; 0 means
// it does not exist. The request lists every topic: asking for one by name
// would let a broker with auto.create.topics.enable create it.
func (s *KafkaSink) topicPartitions(ctx context.Context, topic string) (int, error) {
	var last error
	for _, b := range s.opts.Brokers {
		conn, err := s.dialer.DialContext(ctx, "tcp", b)
		if err != nil {
			last = err
			continue
		}
		deadline := time.Now().Add(s.opts.WriteTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetDeadline(deadline)
		parts, err := conn.ReadPartitions()
		conn.Close()
		if err != nil {
			last = err
			continue
		}
		n := 0
		for _, p := range parts {
			if p.Topic == topic {
				n++
			}
		}
		return n, nil
	}
	return 0, fmt.Errorf("check topic %s: %w", topic, last)
}

// CheckTopics makes sure, before the gateway takes traffic, that the topics
// whose names the config fixes exist: the static route topics and the
// dead-letter topic. It creates them when kafka.create_topics allows, and
// otherwise returns an error naming the config key and topic, so the
// gateway refuses to start rather than dead-letter every record. An
// unreachable Kafka is not an error (the gateway buffers until it is back,
// and each topic is checked again before its first delivery): CheckTopics
// logs it and returns nil after the first topic it could not check. ctx
// bounds the whole check.
func CheckTopics(ctx context.Context, sink Sink, router *Router, dlq string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	topics := router.StaticTopics()
	topics = append(topics, StaticTopic{Key: "egress.dlq", Spec: TopicSpec{Name: dlq}})
	for _, t := range topics {
		err := sink.EnsureTopic(ctx, t.Spec)
		switch {
		case err == nil:
		case errors.Is(err, ErrTopicRejected):
			return fmt.Errorf("%s: %w", t.Key, err)
		default:
			logger.Warn("could not check kafka topics at start; checking them again before their first delivery",
				"topic", t.Spec.Name, "error", err)
			return nil
		}
	}
	return nil
}

// explainEvery bounds how often explain dials a broker.
const explainEvery = 30 * time.Second

// explain adds the reason behind kafka-go's "Broker Not Available", which
// is all its connection pool reports when it cannot connect: it dials the
// first broker with the same security settings, which fails with the real
// cause (SASL authentication failed, a TLS certificate refused, connection
// refused). At most one dial per explainEvery.
func (s *KafkaSink) explain(ctx context.Context, err error) error {
	if !errors.Is(err, kafka.BrokerNotAvailable) {
		return err
	}
	s.mu.Lock()
	if time.Since(s.explainedAt) < explainEvery {
		why := s.explained
		s.mu.Unlock()
		if why == nil {
			return err
		}
		return fmt.Errorf("%w (connecting to %s: %v)", err, s.opts.Brokers[0], why)
	}
	s.explainedAt = time.Now()
	s.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	conn, why := s.dialer.DialContext(dctx, "tcp", s.opts.Brokers[0])
	cancel()
	if conn != nil {
		// With TLS 1.3 the broker refuses a client certificate only after
		// the handshake: a request shows it.
		_ = conn.SetDeadline(time.Now().Add(s.opts.DialTimeout))
		if _, verr := conn.ApiVersions(); verr != nil {
			why = verr
		}
		conn.Close()
	}
	s.mu.Lock()
	s.explained = why
	s.mu.Unlock()
	if why == nil {
		return err
	}
	return fmt.Errorf("%w (connecting to %s: %v)", err, s.opts.Brokers[0], why)
}
