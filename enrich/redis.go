package enrich

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/gateway"
)

// probeTimeout bounds the background probe (and the first one in New). It
// is generous on purpose: a probe may have to dial, and a slow dial must
// not keep a reachable Redis marked down.
const probeTimeout = 2 * time.Second

// startProbeTimeout bounds the probe New waits for.
const startProbeTimeout = time.Second

// newClient builds a go-redis client for standalone, Cluster or Sentinel.
// With bounded set (Enrich's client) go-redis does not retry on its own
// and honours context deadlines on the socket: the Enricher's timeout and
// backoff decide when to try again.
func newClient(r RedisOptions, bounded bool) (redis.UniversalClient, error) {
	uo := &redis.UniversalOptions{
		Addrs:           r.addrs(),
		MasterName:      r.MasterName,
		IsClusterMode:   r.Cluster,
		Username:        r.Username,
		Password:        r.Password,
		DB:              r.DB,
		ClientName:      "iotgw",
		Protocol:        2,
		DisableIdentity: true,
	}
	if r.TLS.on() {
		cfg, err := r.TLS.config()
		if err != nil {
			return nil, err
		}
		uo.TLSConfig = cfg
	}
	if bounded {
		uo.MaxRetries = -1
		uo.DialTimeout = probeTimeout
		uo.DialerRetries = 1
		uo.ReadTimeout = probeTimeout
		uo.WriteTimeout = probeTimeout
		uo.ContextTimeoutEnabled = true
		uo.PoolSize = 4
		uo.MinIdleConns = 1
	}
	return redis.NewUniversalClient(uo), nil
}

// RedisLogger adapts a slog.Logger for redis.SetLogger. go-redis logs
// through one process-wide logger (by default unstructured to stderr, a
// line per failed dial while Redis is down); setting it is main's job, as
// a library must not change globals:
//
//	redis.SetLogger(enrich.RedisLogger{Logger: logger})
//
// Its lines go out at Debug: the Enricher itself logs the state changes an
// operator needs (Redis down, back, CONFIG refused) at Warn and Info.
type RedisLogger struct{ Logger *slog.Logger }

// Printf implements go-redis's logging interface.
func (l RedisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l.Logger != nil {
		l.Logger.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "redis")
	}
}

func (t TLSOptions) config() (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // operator's explicit choice, documented as test-only
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("enrich.redis.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("enrich.redis.tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("enrich.redis.tls.cert_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (e *Enricher) startRedis(ctx context.Context) error {
	client, err := newClient(e.opts.Redis, true)
	if err != nil {
		return err
	}
	e.client = client
	e.cache = newCache(e.opts.Cache.MaxEntries)
	// A snapshot problem costs the fallback after a restart, not the
	// gateway: log it and go on without.
	if dir := e.opts.Snapshot.Dir; dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			e.log.Error("enrich snapshots disabled: cannot create enrich.snapshot.dir", "dir", dir, "error", err)
		} else {
			e.snapshotPath = filepath.Join(dir, snapshotFile)
			e.loadSnapshot()
		}
	}

	pctx, cancel := context.WithTimeout(ctx, startProbeTimeout)
	err = client.Ping(pctx).Err()
	cancel()
	addrs := e.opts.Redis.addrs()
	if err != nil {
		e.down.Store(true)
		e.log.Warn("redis unreachable at start; enriching from the snapshot (marked stale) and reconnecting in the background",
			"addr", addrs, "error", err, "cached", e.cache.len())
	} else {
		e.log.Info("connected to redis", "addr", addrs)
	}

	bg, stop := context.WithCancel(context.Background())
	e.stop = stop
	e.wg.Go(func() { e.runProber(bg) })
	if e.snapshotPath != "" {
		e.wg.Go(func() { e.runSnapshots(bg) })
	}
	if e.opts.Invalidate.Keyspace || e.opts.Invalidate.Channel != "" {
		e.sub = newSubscriber(e)
		e.wg.Go(func() { e.sub.run(bg) })
	}
	return nil
}

// outcome is what one device resolves to in a batch.
type outcome struct {
	ref   map[string]any
	stale bool
}

func (e *Enricher) enrichRedis(ctx context.Context, recs []*gateway.Record) {
	start := time.Now()
	var (
		scratch  [96]byte
		buf      = scratch[:0]
		slow     []int
		hits     uint64
		unknown  uint64
		prevDev  string
		prevRef  map[string]any
		prevFast bool
	)
	e.mu.Lock()
	for i, r := range recs {
		if !prevFast || r.Device != prevDev {
			prevDev = r.Device
			buf, prevRef, prevFast = e.fastLocked(buf, r.Device, start)
		}
		if !prevFast {
			slow = append(slow, i)
			continue
		}
		r.Ref, r.RefStale = prevRef, false
		hits++
		if prevRef == nil {
			unknown++
		}
	}
	e.mu.Unlock()
	e.stats.hits.Add(hits)
	if len(slow) == 0 {
		e.stats.unknown.Add(unknown)
		return
	}
	e.stats.misses.Add(uint64(len(slow)))

	devs := make(map[string]*outcome)
	for _, i := range slow {
		devs[recs[i].Device] = nil
	}
	fctx, cancel := context.WithDeadline(ctx, start.Add(e.opts.Timeout))
	defer cancel()

	// Round trip 1: the hashes of devices not fresh in the cache.
	e.mu.Lock()
	var need []string
	for dev := range devs {
		k := e.devKey.key(dev)
		if d := e.cache.peek(k); d == nil || !d.fresh(start) {
			need = append(need, k)
		}
	}
	e.mu.Unlock()
	answered := true
	if len(need) > 0 {
		answered = e.fetch(fctx, ctx, need)
	}

	// Round trip 2: the lookup rows those devices name.
	e.mu.Lock()
	need = need[:0]
	seen := make(map[string]bool)
	for dev := range devs {
		d := e.cache.peek(e.devKey.key(dev))
		if d == nil || d.fields == nil {
			continue
		}
		for _, l := range e.lookups {
			id := d.fields[l.Field]
			if id == "" {
				continue
			}
			k := l.tmpl.key(id)
			if seen[k] {
				continue
			}
			seen[k] = true
			if le := e.cache.peek(k); le == nil || !le.fresh(start) {
				need = append(need, k)
			}
		}
	}
	e.mu.Unlock()
	if len(need) > 0 && answered {
		e.fetch(fctx, ctx, need)
	}

	e.mu.Lock()
	for dev := range devs {
		devs[dev] = e.resolveLocked(dev, start)
	}
	e.mu.Unlock()

	var stale uint64
	for _, i := range slow {
		r := recs[i]
		o := devs[r.Device]
		r.Ref, r.RefStale = o.ref, o.stale
		switch {
		case o.ref == nil:
			unknown++
		case o.stale:
			stale++
		}
	}
	e.stats.unknown.Add(unknown)
	e.stats.stale.Add(stale)
}

// fastLocked returns the device's ref when it and every lookup row it was
// built from are fresh in the cache; ok is false when Redis must be asked.
// A fresh "no such device" is ok with a nil ref. buf is scratch space for
// the key, returned for reuse.
func (e *Enricher) fastLocked(buf []byte, dev string, now time.Time) (_ []byte, ref map[string]any, ok bool) {
	buf = e.devKey.appendKey(buf[:0], dev)
	d := e.cache.getBytes(buf)
	if d == nil || !d.fresh(now) {
		return buf, nil, false
	}
	if d.fields == nil {
		return buf, nil, true
	}
	if d.ref == nil {
		return buf, nil, false
	}
	for _, dp := range d.deps {
		if dp.e == nil || dp.e.removed || dp.e.gen != dp.gen || !dp.e.fresh(now) {
			return buf, nil, false
		}
	}
	for _, dp := range d.deps {
		e.cache.touch(dp.e)
	}
	return buf, d.ref, true
}

// resolveLocked composes the device's ref from whatever the cache holds
// after this call's fetches. Data Redis did not confirm during this call
// and whose TTL ran out makes the ref stale.
func (e *Enricher) resolveLocked(dev string, start time.Time) *outcome {
	d := e.cache.get(e.devKey.key(dev))
	if d == nil || d.fields == nil {
		return &outcome{}
	}
	current := func(x *entry) bool { return x.fresh(start) || !x.checked.Before(start) }
	stale := !current(d)
	if d.ref != nil && e.depsValidLocked(d) {
		for _, dp := range d.deps {
			if dp.e == nil || !current(dp.e) {
				stale = true
			}
			if dp.e != nil {
				e.cache.touch(dp.e)
			}
		}
		return &outcome{ref: d.ref, stale: stale}
	}
	deps := make([]dep, 0, len(e.lookups))
	ref := e.compose(d.fields, func(l compiledLookup, id string) map[string]any {
		k := l.tmpl.key(id)
		le := e.cache.get(k)
		if le == nil {
			deps = append(deps, dep{key: k})
			stale = true
			return nil
		}
		deps = append(deps, dep{key: k, e: le, gen: le.gen})
		if !current(le) {
			stale = true
		}
		if le.fields == nil {
			return nil
		}
		return le.nestedMap()
	})
	d.ref, d.deps = ref, deps
	return &outcome{ref: ref, stale: stale}
}

// depsValidLocked reports whether the lookup rows d.ref was built from are
// still what the cache holds.
func (e *Enricher) depsValidLocked(d *entry) bool {
	for _, dp := range d.deps {
		if dp.e == nil {
			if e.cache.peek(dp.key) != nil {
				return false
			}
			continue
		}
		if dp.e.removed || dp.e.gen != dp.gen {
			return false
		}
	}
	return true
}

// fetch reads keys with HGETALL in one pipeline and caches the answers:
// fields with the TTL, "does not exist" with the negative TTL. It reports
// whether Redis answered. When Redis is marked down it does nothing; when
// the pipeline fails it marks Redis down so later batches do not wait.
// parent is the caller's context: a failure caused by it being cancelled
// says nothing about Redis.
func (e *Enricher) fetch(ctx, parent context.Context, keys []string) bool {
	if e.down.Load() {
		e.stats.skipped.Add(1)
		return false
	}
	if ctx.Err() != nil {
		return false
	}
	e.mu.Lock()
	seq := e.invalSeq
	e.mu.Unlock()

	pipe := e.client.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	sent := time.Now()
	_, err := pipe.Exec(ctx)
	checked := time.Now()
	e.stats.roundTrips.Add(1)
	e.stats.redisWait.Add(int64(checked.Sub(sent)))
	var replyErr redis.Error
	if err != nil && !errors.As(err, &replyErr) {
		e.stats.failures.Add(1)
		if parent.Err() == nil {
			e.markDown(err)
		}
		return false
	}

	var failed, wrongType int
	var firstErr error
	e.mu.Lock()
	// An invalidation that arrived while the pipeline was in flight may be
	// about a value read before the change: keep the answers, but as
	// already expired so the next batch reads them again.
	racing := e.invalSeq != seq
	for i, cmd := range cmds {
		fields, err := cmd.Result()
		switch {
		case err == nil:
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			wrongType++
			firstErr = firstNonNil(firstErr, err)
			fields = nil
		default:
			failed++
			firstErr = firstNonNil(firstErr, err)
			continue
		}
		ttl := e.opts.Cache.TTL
		if len(fields) == 0 {
			fields, ttl = nil, e.opts.Cache.NegativeTTL
		}
		expires := checked.Add(ttl)
		if racing {
			expires = time.Time{}
		}
		e.cache.set(keys[i], fields, expires, checked)
	}
	e.mu.Unlock()
	if wrongType > 0 {
		e.log.Warn("reference data keys are not hashes; treating them as unknown", "keys", wrongType, "error", firstErr)
	}
	if failed > 0 {
		e.stats.failures.Add(1)
		if parent.Err() == nil {
			e.markDown(firstErr)
		}
	}
	return failed == 0
}

func firstNonNil(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// markDown stops Enrich from asking Redis until the prober reaches it.
func (e *Enricher) markDown(err error) {
	if e.down.CompareAndSwap(false, true) {
		e.log.Warn("redis not answering; enriching from cache (marked stale) until it does", "error", err)
		select {
		case e.tripped <- struct{}{}:
		default:
		}
	}
}

// runProber pings Redis while it is marked down, backing off exponentially
// with jitter, and lets Enrich use it again once it answers. A Redis that
// answers PING but fails Enrich again soon after (overloaded, too slow for
// enrich.timeout) keeps its longer backoff, so it costs one timed-out
// batch per backoff period rather than one every MinBackoff.
func (e *Enricher) runProber(ctx context.Context) {
	backoff := e.opts.Redis.MinBackoff
	var upSince time.Time
	timer := time.NewTimer(jitter(backoff))
	if !e.down.Load() {
		timer.Stop()
	}
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.tripped:
			if time.Since(upSince) < e.opts.Redis.MaxBackoff {
				backoff = min(2*backoff, e.opts.Redis.MaxBackoff)
			} else {
				backoff = e.opts.Redis.MinBackoff
			}
			e.log.Debug("redis marked down", "retry_in", backoff)
			timer.Reset(jitter(backoff))
		case <-timer.C:
			pctx, cancel := context.WithTimeout(ctx, max(probeTimeout, e.opts.Timeout))
			err := e.client.Ping(pctx).Err()
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				backoff = min(2*backoff, e.opts.Redis.MaxBackoff)
				e.log.Debug("redis probe failed", "error", err, "retry_in", backoff)
				timer.Reset(jitter(backoff))
				continue
			}
			e.down.Store(false)
			upSince = time.Now()
			e.log.Info("redis answering again; enriching from redis", "addr", e.opts.Redis.addrs())
		}
	}
}

// jitter spreads d by ±20% so gateways that lost the same Redis do not
// reconnect in lockstep.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}
