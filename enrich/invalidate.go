package enrich

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// healthInterval is how long the subscriber waits for a message before it
// pings; a ping unanswered for another interval means the connection is
// dead (a Redis behind a vanished route sends no RST).
const healthInterval = 15 * time.Second

// keyspaceFlags are the notify-keyspace-events classes invalidation needs:
// K keyspace channels, h hash commands (HSET, HDEL), g generic commands
// (DEL, RENAME, EXPIRE), x expirations.
const keyspaceFlags = "Kghx"

// subscriber turns Redis keyspace notifications and messages on the
// invalidation channel into cache invalidations.
type subscriber struct {
	e        *Enricher
	patterns []string // keyspace patterns, PSUBSCRIBEd
	channels []string // the invalidation channel, SUBSCRIBEd

	mu     sync.Mutex
	ps     *redis.PubSub
	closed bool

	subscribed   atomic.Bool // a subscription is confirmed and live
	configWarned bool
}

func newSubscriber(e *Enricher) *subscriber {
	s := &subscriber{e: e}
	if e.opts.Invalidate.Keyspace {
		prefix := "__keyspace@" + strconv.Itoa(e.opts.Redis.DB) + "__:"
		s.patterns = append(s.patterns, prefix+e.devKey.pattern())
		for _, l := range e.lookups {
			if p := prefix + l.tmpl.pattern(); !slices.Contains(s.patterns, p) {
				s.patterns = append(s.patterns, p)
			}
		}
	}
	if c := e.opts.Invalidate.Channel; c != "" {
		s.channels = []string{c}
	}
	return s
}

// run keeps a subscription open until ctx is done, reconnecting with
// backoff when it breaks.
func (s *subscriber) run(ctx context.Context) {
	backoff := s.e.opts.Redis.MinBackoff
	for {
		ps := s.open(ctx)
		if ps == nil {
			return
		}
		err := s.serve(ctx, ps)
		s.subscribed.Store(false)
		_ = ps.Close()
		if ctx.Err() != nil {
			return
		}
		s.e.log.Debug("invalidation subscription lost; retrying", "error", err, "retry_in", backoff)
		t := time.NewTimer(jitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.e.opts.Redis.MaxBackoff)
	}
}

func (s *subscriber) open(ctx context.Context) *redis.PubSub {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.ps = s.e.client.Subscribe(ctx)
	return s.ps
}

// close ends the subscription; it unblocks a pending receive.
func (s *subscriber) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.ps != nil {
		_ = s.ps.Close()
	}
}

// serve subscribes on ps and applies messages until the connection fails.
func (s *subscriber) serve(ctx context.Context, ps *redis.PubSub) error {
	if len(s.channels) > 0 {
		if err := ps.Subscribe(ctx, s.channels...); err != nil {
			return err
		}
	}
	if len(s.patterns) > 0 {
		if err := ps.PSubscribe(ctx, s.patterns...); err != nil {
			return err
		}
	}
	confirmed, pinged := 0, false
	for {
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || pinged {
				return err
			}
			if err := ps.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			confirmed++
			if confirmed == len(s.channels)+len(s.patterns) {
				s.onSubscribed(ctx)
			}
		case *redis.Message:
			s.handle(m)
		}
	}
}

// onSubscribed runs once a (re)subscription is confirmed. Changes made
// while no subscription was live were missed, so every cached entry is
// made stale: each is read again on its next use.
func (s *subscriber) onSubscribed(ctx context.Context) {
	if len(s.patterns) > 0 {
		s.ensureKeyspaceEvents(ctx)
	}
	n := s.e.invalidateAll()
	s.subscribed.Store(true)
	s.e.log.Debug("invalidation subscription live", "channels", s.channels, "patterns", s.patterns, "revalidating", n)
}

// ensureKeyspaceEvents turns on the notify-keyspace-events classes that
// keyspace invalidation needs, keeping whatever else is on. It runs on
// every subscription because a restarted Redis forgets CONFIG SET.
func (s *subscriber) ensureKeyspaceEvents(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cur, err := s.e.client.ConfigGet(cctx, "notify-keyspace-events").Result()
	if err != nil {
		s.warnConfig(err)
		return
	}
	flags := cur["notify-keyspace-events"]
	add := missingFlags(flags, keyspaceFlags)
	if add == "" {
		return
	}
	if err := s.e.client.ConfigSet(cctx, "notify-keyspace-events", flags+add).Err(); err != nil {
		s.warnConfig(err)
		return
	}
	s.e.log.Info("enabled redis keyspace notifications", "notify_keyspace_events", flags+add)
}

func (s *subscriber) warnConfig(err error) {
	if s.configWarned {
		return
	}
	s.configWarned = true
	s.e.log.Warn("cannot enable redis keyspace notifications (CONFIG refused); cache entries are refreshed by TTL and the invalidation channel only",
		"error", err, "need", "notify-keyspace-events "+keyspaceFlags, "channel", s.e.opts.Invalidate.Channel, "ttl", s.e.opts.Cache.TTL)
}

// missingFlags returns the characters of want not enabled by flags. "A"
// in flags stands for every event class.
func missingFlags(flags, want string) string {
	have := flags
	if strings.ContainsRune(flags, 'A') {
		have += "g$lshzxetd"
	}
	var add []byte
	for i := 0; i < len(want); i++ {
		if !strings.ContainsRune(have, rune(want[i])) {
			add = append(add, want[i])
		}
	}
	return string(add)
}

// handle applies one notification. Keyspace messages name the key in the
// channel (__keyspace@0__:KEY); channel messages carry keys separated by
// white space, or "*" or nothing for everything.
func (s *subscriber) handle(m *redis.Message) {
	if m.Pattern != "" {
		if i := strings.Index(m.Channel, "__:"); i >= 0 {
			s.e.invalidate(m.Channel[i+3:])
		}
		return
	}
	keys := strings.Fields(m.Payload)
	if len(keys) == 0 || slices.Contains(keys, "*") {
		n := s.e.invalidateAll()
		s.e.log.Debug("reference data changed; revalidating every cached entry", "channel", m.Channel, "entries", n)
		return
	}
	s.e.invalidate(keys...)
}

// invalidate makes the keys' cache entries stale.
func (e *Enricher) invalidate(keys ...string) {
	e.mu.Lock()
	e.invalSeq++
	for _, k := range keys {
		e.cache.invalidate(k)
	}
	e.mu.Unlock()
	e.stats.invalidations.Add(1)
}

// invalidateAll makes every cache entry stale and returns how many.
func (e *Enricher) invalidateAll() int {
	e.mu.Lock()
	e.invalSeq++
	n := e.cache.invalidateAll()
	e.mu.Unlock()
	e.stats.invalidations.Add(1)
	return n
}
