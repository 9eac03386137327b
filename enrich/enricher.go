package enrich

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/gateway"
)

var _ gateway.Enricher = (*Enricher)(nil)

// Enricher fills gateway.Record.Ref from reference data. It is safe for
// concurrent use. The Ref maps it hands out are shared between records and
// between batches: treat them as read-only.
type Enricher struct {
	opts    Options
	log     *slog.Logger
	devKey  keyTemplate
	lookups []compiledLookup

	// Backend "file": the composed ref of every device in the file.
	fileRefs map[string]map[string]any

	// Backend "redis".
	client       redis.UniversalClient
	mu           sync.Mutex // guards cache and invalSeq
	cache        *cache
	invalSeq     uint64 // bumped by every invalidation, to spot one racing a fetch
	down         atomic.Bool
	tripped      chan struct{} // wakes the prober when down becomes true
	snapshotPath string
	snapMu       sync.Mutex // serialises snapshot writes
	snapVersion  uint64     // cache version last written, under snapMu
	sub          *subscriber

	stats counters

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

type compiledLookup struct {
	Lookup
	tmpl keyTemplate
}

// Stats are counters since New. Records are counted once per Enrich call.
type Stats struct {
	Hits          uint64        `json:"hits"`          // records resolved from fresh cached data (unknown devices too) without Redis
	Misses        uint64        `json:"misses"`        // records whose data was absent or expired in the cache
	Stale         uint64        `json:"stale"`         // records enriched with data Redis could not confirm (RefStale)
	Unknown       uint64        `json:"unknown"`       // records left without Ref: unknown device or no data reachable
	Failures      uint64        `json:"failures"`      // Redis round trips that failed or timed out in Enrich
	RoundTrips    uint64        `json:"round_trips"`   // Redis pipelines Enrich executed
	RedisWait     time.Duration `json:"redis_wait_ns"` // time Enrich spent waiting for those pipelines
	Skipped       uint64        `json:"skipped"`       // Enrich calls that needed Redis while it was marked down
	Invalidations uint64        `json:"invalidations"` // invalidation messages applied
	Evictions     uint64        `json:"evictions"`     // cache entries dropped by the size bound
	Entries       int           `json:"entries"`       // cache entries now
	RedisDown     bool          `json:"redis_down"`    // Enrich is not asking Redis until a probe succeeds
}

type counters struct {
	hits, misses, stale, unknown, failures, roundTrips, skipped, invalidations atomic.Uint64
	redisWait                                                                  atomic.Int64 // nanoseconds
}

// New builds an Enricher for opts.Backend. ctx bounds start-up work only
// (reading the file or snapshot, the first Redis probe); background work
// runs until Close. It fails on invalid options (unreadable TLS files
// included) and on a file backend whose file cannot be read or parsed;
// never because Redis is unreachable (it then enriches from the snapshot,
// marked stale, and reconnects in the background) nor because of the
// snapshot (logged). logger nil discards logs.
func New(ctx context.Context, opts Options, logger *slog.Logger) (*Enricher, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e := &Enricher{
		opts:    opts,
		log:     logger.With("component", "enrich"),
		devKey:  mustTemplate(opts.Key),
		tripped: make(chan struct{}, 1),
		stop:    func() {},
	}
	for _, l := range opts.Lookups {
		e.lookups = append(e.lookups, compiledLookup{Lookup: l, tmpl: mustTemplate(l.Key)})
	}
	switch opts.Backend {
	case BackendFile:
		if err := e.startFile(); err != nil {
			return nil, err
		}
	case BackendRedis:
		if err := e.startRedis(ctx); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *Enricher) startFile() error {
	var (
		d   *refData
		err error
	)
	name := e.opts.File
	if name == "" {
		name = "built-in example fleet"
		d, err = parseYAML(defaultData, name)
	} else {
		d, err = readRefFile(name, e.opts.Lookups)
	}
	if err != nil {
		return fmt.Errorf("enrich.file: %w", err)
	}
	unused, missing := d.unusedTables(e.opts.Lookups)
	if len(unused) > 0 {
		e.log.Warn("reference data tables not used by any enrich.lookups entry", "file", name, "tables", unused)
	}
	if len(missing) > 0 {
		e.log.Warn("enrich.lookups tables missing from reference data", "file", name, "tables", missing)
	}
	e.fileRefs = make(map[string]map[string]any, len(d.devices))
	for id, fields := range d.devices {
		e.fileRefs[id] = e.compose(fields, func(l compiledLookup, id string) map[string]any {
			row, ok := d.tables[l.Table][id]
			if !ok {
				return nil
			}
			m := make(map[string]any, len(row))
			for k, v := range row {
				m[k] = v
			}
			return m
		})
	}
	e.log.Info("reference data loaded", "file", name, "devices", len(d.devices), "rows", d.rowCount())
	return nil
}

// compose builds a device's ref: its fields, with each lookup's row (from
// row, nil if unknown) placed under the lookup's As name.
func (e *Enricher) compose(fields hash, row func(l compiledLookup, id string) map[string]any) map[string]any {
	ref := make(map[string]any, len(fields)+len(e.lookups))
	for k, v := range fields {
		ref[k] = v
	}
	for _, l := range e.lookups {
		id := fields[l.Field]
		if id == "" {
			continue
		}
		if m := row(l, id); m != nil {
			ref[l.As] = m
		}
	}
	return ref
}

// Enrich sets Ref and RefStale on every record: the device's reference
// data, nil (not stale) for unknown devices. With backend redis it spends
// at most opts.Timeout on Redis (two pipelined round trips for a cold
// batch, none for a warm one) and falls back to cached data marked stale.
// It returns an error only after Close; the records are then untouched.
func (e *Enricher) Enrich(ctx context.Context, recs []*gateway.Record) error {
	if e.closed.Load() {
		return gateway.ErrClosed
	}
	switch {
	case e.fileRefs != nil:
		e.enrichFile(recs)
	case e.client != nil:
		e.enrichRedis(ctx, recs)
	}
	return nil
}

func (e *Enricher) enrichFile(recs []*gateway.Record) {
	var hits, unknown uint64
	for _, r := range recs {
		r.Ref, r.RefStale = e.fileRefs[r.Device], false
		if r.Ref != nil {
			hits++
		} else {
			unknown++
		}
	}
	e.stats.hits.Add(hits)
	e.stats.unknown.Add(unknown)
}

// Stats returns the counters.
func (e *Enricher) Stats() Stats {
	s := Stats{
		Hits:          e.stats.hits.Load(),
		Misses:        e.stats.misses.Load(),
		Stale:         e.stats.stale.Load(),
		Unknown:       e.stats.unknown.Load(),
		Failures:      e.stats.failures.Load(),
		RoundTrips:    e.stats.roundTrips.Load(),
		RedisWait:     time.Duration(e.stats.redisWait.Load()),
		Skipped:       e.stats.skipped.Load(),
		Invalidations: e.stats.invalidations.Load(),
		RedisDown:     e.down.Load(),
	}
	if e.cache != nil {
		e.mu.Lock()
		s.Entries = e.cache.len()
		s.Evictions = e.cache.evicted
		e.mu.Unlock()
	}
	return s
}

// Close stops background work, writes the snapshot and closes the Redis
// connections. It is safe to call twice; Enrich then returns
// gateway.ErrClosed.
func (e *Enricher) Close() error {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		e.stop()
		if e.sub != nil {
			e.sub.close()
		}
		e.wg.Wait()
		var errs []error
		if e.snapshotPath != "" {
			if err := e.writeSnapshot(); err != nil {
				errs = append(errs, err)
			}
		}
		if e.client != nil {
			if err := e.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
				errs = append(errs, fmt.Errorf("close redis client: %w", err))
			}
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}
