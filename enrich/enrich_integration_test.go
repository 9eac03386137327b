//go:build integration

package enrich

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/gateway"
)

// sharedRedis returns the test Redis address (IOTGW_TEST_REDIS, default
// 127.0.0.1:16379) and a client to it. An unreachable Redis fails the test:
// integration tests must not pass by skipping.
func sharedRedis(t testing.TB) (string, *redis.Client) {
	t.Helper()
	addr := os.Getenv("IOTGW_TEST_REDIS")
	if addr == "" {
		addr = "127.0.0.1:16379"
	}
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("test Redis at %s unreachable (start it with `make redis-up` or set IOTGW_TEST_REDIS): %v", addr, err)
	}
	return addr, c
}

// namespace gives a test its own key prefix and channel in the shared
// Redis and deletes its keys afterwards.
func namespace(t testing.TB, c *redis.Client) string {
	prefix := fmt.Sprintf("iotgwtest:%s:%d:", strings.ReplaceAll(t.Name(), "/", "_"), rand.Uint32())
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return prefix
}

// nsOptions are Redis backend options inside a namespace: a route lookup,
// a TTL far longer than any test so only invalidation can refresh, a long
// Redis timeout and short backoffs.
func nsOptions(t testing.TB, addr, prefix string) Options {
	o := DefaultOptions()
	o.Backend = BackendRedis
	o.Redis.Addr = addr
	o.Key = prefix + "device:{device}"
	o.Lookups = []Lookup{{Field: "route", Key: prefix + "route:{route}"}}
	o.Invalidate.Channel = prefix + "ref-changed"
	o.Cache.TTL = time.Hour
	o.Cache.NegativeTTL = time.Hour
	// Generous, so a CPU-starved test machine does not turn a functional
	// test into a timeout test; the outage tests set their own.
	o.Timeout = 5 * time.Second
	o.Snapshot.Dir = t.TempDir()
	o.Redis.MinBackoff = 20 * time.Millisecond
	o.Redis.MaxBackoff = 200 * time.Millisecond
	return o
}

func mustNew(t testing.TB, o Options) *Enricher {
	t.Helper()
	e, err := New(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// waitSubscribed waits until invalidation messages are being received, so
// a test's changes cannot fall in the gap before the subscription.
func waitSubscribed(t testing.TB, e *Enricher) {
	t.Helper()
	eventually(t, 5*time.Second, "invalidation subscription", func() bool { return e.sub.subscribed.Load() })
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s", what, timeout)
		}
		<-tick.C
	}
}

func hset(t testing.TB, c *redis.Client, key string, kv ...any) {
	t.Helper()
	if err := c.HSet(context.Background(), key, kv...).Err(); err != nil {
		t.Fatal(err)
	}
}

func enrichOne(t testing.TB, e *Enricher, device string) *gateway.Record {
	t.Helper()
	recs := records(device)
	if err := e.Enrich(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	return recs[0]
}

func TestRedisEnrichTwoLevels(t *testing.T) {
	addr, c := sharedRedis(t)
	p := namespace(t, c)
	hset(t, c, p+"device:t1", "fleet", "north", "route", "r1")
	hset(t, c, p+"device:t2", "fleet", "south", "route", "r404")
	hset(t, c, p+"route:r1", "name", "Coast", "km", "118")
	e := mustNew(t, nsOptions(t, addr, p))
	waitSubscribed(t, e) // a new subscription revalidates the whole cache

	recs := records("t1", "t2", "ghost", "t1")
	if err := e.Enrich(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"fleet": "north", "route": map[string]any{"name": "Coast", "km": "118"}},
		{"fleet": "south", "route": "r404"},
		nil,
		{"fleet": "north", "route": map[string]any{"name": "Coast", "km": "118"}},
	}
	for i, r := range recs {
		if !reflect.DeepEqual(r.Ref, want[i]) || r.RefStale {
			t.Errorf("%s: ref %v stale %v, want %v", r.Device, r.Ref, r.RefStale, want[i])
		}
	}
	s := e.Stats()
	if s.RoundTrips != 2 || s.Misses != 4 || s.Unknown != 1 {
		t.Errorf("cold stats = %+v, want 2 round trips, 4 misses, 1 unknown", s)
	}

	// Warm: no round trip, same shared maps.
	recs2 := records("t1", "ghost")
	_ = e.Enrich(context.Background(), recs2)
	if s2 := e.Stats(); s2.RoundTrips != s.RoundTrips || s2.Hits != 2 {
		t.Errorf("warm stats = %+v, want no new round trip and 2 hits", s2)
	}
	if !reflect.DeepEqual(recs2[0].Ref, want[0]) || recs2[1].Ref != nil {
		t.Errorf("warm refs %v %v", recs2[0].Ref, recs2[1].Ref)
	}
}

// pipelineCounter counts what reaches Redis through a client.
type pipelineCounter struct{ pipelines, commands atomic.Int64 }

func (h *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.commands.Add(1); return next(ctx, cmd) }
}
func (h *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.pipelines.Add(1); return next(ctx, cmds) }
}

func TestRedisRoundTripsPerColdBatch(t *testing.T) {
	addr, c := sharedRedis(t)
	p := namespace(t, c)
	const devices, routes, unknown = 300, 25, 50
	pipe := c.Pipeline()
	for i := range devices {
		pipe.HSet(context.Background(), fmt.Sprintf("%sdevice:d%d", p, i), "route", fmt.Sprintf("r%d", i%routes), "n", i)
	}
	for i := range routes {
		pipe.HSet(context.Background(), fmt.Sprintf("%sroute:r%d", p, i), "name", fmt.Sprintf("route %d", i))
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := nsOptions(t, addr, p)
	o.Timeout = 2 * time.Second // measure round trips, not this machine's scheduling under -race
	e := mustNew(t, o)
	waitSubscribed(t, e)
	hook := &pipelineCounter{}
	e.client.AddHook(hook)

	batch := make([]*gateway.Record, 1000)
	for i := range batch {
		dev := fmt.Sprintf("d%d", i%(devices+unknown)) // d300..d349 do not exist
		batch[i] = &gateway.Record{Device: dev}
	}
	before := e.Stats()
	start := time.Now()
	if err := e.Enrich(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	cold := time.Since(start)
	after := e.Stats()
	rt := after.RoundTrips - before.RoundTrips
	t.Logf("cold batch of 1000 records (%d distinct devices, %d unknown, %d routes): %d round trips (hook: %d pipelines, %d commands), %s",
		devices+unknown, unknown, routes, rt, hook.pipelines.Load(), hook.commands.Load(), cold)
	// The hook also sees a new connection's handshake: count it too.
	if all := hook.pipelines.Load() + hook.commands.Load(); rt > 5 || all > 5 {
		t.Fatalf("cold batch cost %d round trips (%d with connection setup), want <= 5", rt, all)
	}
	for _, r := range batch {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.Device, "d"))
		switch {
		case n >= devices && r.Ref != nil:
			t.Fatalf("unknown %s enriched: %v", r.Device, r.Ref)
		case n < devices && (r.Ref["n"] != strconv.Itoa(n) || r.Ref["route"].(map[string]any)["name"] != fmt.Sprintf("route %d", n%routes)):
			t.Fatalf("%s: ref %v", r.Device, r.Ref)
		}
	}

	// Warm, unknown devices included (negative cache): no round trip.
	pipelines := hook.pipelines.Load() + hook.commands.Load()
	_ = e.Enrich(context.Background(), batch)
	if rt := e.Stats().RoundTrips - after.RoundTrips; rt != 0 || hook.pipelines.Load()+hook.commands.Load() != pipelines {
		t.Fatalf("warm batch cost %d round trips", rt)
	}
}

func TestRedisInvalidationKeyspace(t *testing.T) {
	addr, c := sharedRedis(t)
	p := namespace(t, c)
	hset(t, c, p+"device:t1", "fleet", "north", "route", "r1")
	hset(t, c, p+"route:r1", "name", "Coast")
	o := nsOptions(t, addr, p)
	o.Invalidate.Channel = "" // keyspace notifications only
	e := mustNew(t, o)
	waitSubscribed(t, e)
	if r := enrichOne(t, e, "t1"); r.Ref["fleet"] != "north" {
		t.Fatalf("ref %v", r.Ref)
	}

	tests := []struct {
		name   string
		change func()
		check  func(map[string]any) bool
	}{
		{"device field", func() { hset(t, c, p+"device:t1", "fleet", "east") },
			func(r map[string]any) bool { return r["fleet"] == "east" }},
		{"second level", func() { hset(t, c, p+"route:r1", "name", "Inland") },
			func(r map[string]any) bool { return r["route"].(map[string]any)["name"] == "Inland" }},
		{"lookup id", func() { hset(t, c, p+"device:t1", "route", "r2"); hset(t, c, p+"route:r2", "name", "Hill") },
			func(r map[string]any) bool { m, ok := r["route"].(map[string]any); return ok && m["name"] == "Hill" }},
		{"delete", func() { c.Del(context.Background(), p+"device:t1") },
			func(r map[string]any) bool { return r == nil }},
		{"create", func() { hset(t, c, p+"device:t1", "fleet", "west") },
			func(r map[string]any) bool { return r != nil && r["fleet"] == "west" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			tt.change()
			eventually(t, 5*time.Second, tt.name, func() bool { return tt.check(enrichOne(t, e, "t1").Ref) })
			t.Logf("visible after %s (TTL %s)", time.Since(start).Round(time.Millisecond), o.Cache.TTL)
		})
	}
}

func TestRedisInvalidationChannelAndLoad(t *testing.T) {
	addr, c := sharedRedis(t)
	p := namespace(t, c)
	hset(t, c, p+"device:t1", "fleet", "north")
	o := nsOptions(t, addr, p)
	o.Invalidate.Keyspace = false
	e := mustNew(t, o)
	waitSubscribed(t, e)
	if r := enrichOne(t, e, "t1"); r.Ref["fleet"] != "north" {
		t.Fatalf("ref %v", r.Ref)
	}
	hset(t, c, p+"device:t1", "fleet", "east")
	if r := enrichOne(t, e, "t1"); r.Ref["fleet"] != "north" {
		t.Fatalf("changed without invalidation (keyspace is off): %v", r.Ref)
	}
	c.Publish(context.Background(), o.Invalidate.Channel, p+"device:t1")
	eventually(t, 5*time.Second, "channel invalidation", func() bool { return enrichOne(t, e, "t1").Ref["fleet"] == "east" })
	if r := enrichOne(t, e, "truck-0001"); r.Ref != nil {
		t.Fatalf("truck-0001 known before Load: %v", r.Ref)
	}

	// Load the example fleet into the namespace: it publishes "*".
	lo := o
	lo.Lookups = []Lookup{
		{Field: "fleet", Key: p + "fleet:{fleet}"}, {Field: "route", Key: p + "route:{route}"},
		{Field: "driver", Key: p + "driver:{driver}"}, {Field: "depot", Key: p + "depot:{depot}"},
	}
	lo.SetDefaults()
	var out strings.Builder
	sum, err := Load(context.Background(), lo, filepath.Join("..", "examples", "refdata", "fleet.yaml"), &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Load output:\n%s", out.String())
	if sum.Devices != 11 || sum.Rows["routes"] != 7 || !sum.Published || sum.Keys != 11+4+7+7+3 {
		t.Errorf("summary %+v", sum)
	}
	e2 := mustNew(t, lo)
	r := enrichOne(t, e2, "truck-0001")
	if !reflect.DeepEqual(r.Ref, truck1Ref) {
		t.Errorf("after Load: %v\nwant %v", r.Ref, truck1Ref)
	}
	// e has truck-0001 cached as unknown; Load's "*" must reach it.
	eventually(t, 5*time.Second, "invalidation by Load", func() bool { return enrichOne(t, e, "truck-0001").Ref != nil })

	// CSV: same keys, same data, and a hash is replaced, not merged.
	hset(t, c, p+"device:truck-0001", "stray", "x")
	if _, err := Load(context.Background(), lo, filepath.Join("..", "examples", "refdata", "fleet.csv"), io.Discard); err != nil {
		t.Fatal(err)
	}
	got, _ := c.HGetAll(context.Background(), p+"device:truck-0001").Result()
	if _, ok := got["stray"]; ok || got["model"] != "Actros 1845" {
		t.Errorf("after CSV load: %v", got)
	}
}

// childRedis is a redis-server this test owns, so it can stop it.
type childRedis struct {
	t    testing.TB
	addr string
	args []string // before the common flags: a config file, --sentinel
	cmd  *exec.Cmd
}

func startChildRedis(t testing.TB, args ...string) *childRedis {
	c := &childRedis{t: t, addr: deadAddr(t), args: args}
	c.start()
	t.Cleanup(c.kill)
	return c
}

func (c *childRedis) start() {
	c.t.Helper()
	_, port, _ := net.SplitHostPort(c.addr)
	args := append(slices.Clone(c.args), "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--loglevel", "warning", "--dir", c.t.TempDir())
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start redis-server: %v", err)
	}
	c.cmd = cmd
	cl := redis.NewClient(&redis.Options{Addr: c.addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer cl.Close()
	eventually(c.t, 10*time.Second, "child redis-server up", func() bool {
		return cl.Ping(context.Background()).Err() == nil
	})
}

func (c *childRedis) kill() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGCONT)
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	c.cmd = nil
}

func (c *childRedis) client() *redis.Client {
	cl := redis.NewClient(&redis.Options{Addr: c.addr, Protocol: 2, DisableIdentity: true})
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

func batchOf(n int, devices ...string) []*gateway.Record {
	recs := make([]*gateway.Record, n)
	for i := range recs {
		recs[i] = &gateway.Record{Device: devices[i%len(devices)]}
	}
	return recs
}

// TestRedisOutage stops Redis mid-test (killed, then hung with SIGSTOP):
// every batch returns in under 200ms, cached data is used marked stale,
// and enrichment recovers when Redis is back.
func TestRedisOutage(t *testing.T) {
	for _, mode := range []string{"killed", "hung"} {
		t.Run(mode, func(t *testing.T) {
			srv := startChildRedis(t)
			c := srv.client()
			hset(t, c, "iotgw:device:t1", "fleet", "north", "route", "r1")
			hset(t, c, "iotgw:route:r1", "name", "Coast")
			o := nsOptions(t, srv.addr, "iotgw:")
			o.Cache.TTL = 300 * time.Millisecond // so entries expire while Redis is away
			o.Timeout = 100 * time.Millisecond
			e := mustNew(t, o)
			waitSubscribed(t, e)
			eventually(t, 10*time.Second, "data cached before the outage", func() bool {
				recs := batchOf(1000, "t1", "ghost")
				_ = e.Enrich(context.Background(), recs)
				return recs[0].Ref["fleet"] == "north" && !recs[0].RefStale
			})
			wait0 := e.Stats().RedisWait

			switch mode {
			case "killed":
				srv.kill()
			case "hung":
				_ = srv.cmd.Process.Signal(syscall.SIGSTOP)
			}
			var worst time.Duration
			batches := 0
			eventually(t, 5*time.Second, "stale records", func() bool {
				recs := batchOf(1000, "t1", "ghost")
				start := time.Now()
				enrichBounded(t, e, recs)
				worst = max(worst, time.Since(start))
				batches++
				return recs[0].RefStale
			})
			for range 20 {
				recs := batchOf(1000, "t1", "ghost", "never-seen")
				start := time.Now()
				enrichBounded(t, e, recs)
				worst = max(worst, time.Since(start))
				batches++
				want := map[string]any{"fleet": "north", "route": map[string]any{"name": "Coast"}}
				if !reflect.DeepEqual(recs[0].Ref, want) || !recs[0].RefStale {
					t.Fatalf("during outage: %v stale %v", recs[0].Ref, recs[0].RefStale)
				}
				if recs[1].Ref != nil || recs[1].RefStale || recs[2].Ref != nil {
					t.Fatalf("unknown devices during outage: %v %v", recs[1].Ref, recs[2].Ref)
				}
			}
			s := e.Stats()
			t.Logf("%s: %d batches of 1000 during the outage, slowest %s, %s waiting on Redis in all; stats %+v",
				mode, batches, worst, s.RedisWait-wait0, s)
			if !s.RedisDown || s.Failures == 0 {
				t.Errorf("stats = %+v, want Redis marked down after a failure", s)
			}

			switch mode {
			case "killed":
				srv.start() // empty: --save ''
				c = srv.client()
				hset(t, c, "iotgw:device:t1", "fleet", "south", "route", "r1")
				hset(t, c, "iotgw:route:r1", "name", "Coast")
			case "hung":
				_ = srv.cmd.Process.Signal(syscall.SIGCONT)
				hset(t, c, "iotgw:device:t1", "fleet", "south")
			}
			eventually(t, 10*time.Second, "recovery", func() bool {
				recs := batchOf(10, "t1")
				enrichBounded(t, e, recs)
				return !recs[0].RefStale && recs[0].Ref["fleet"] == "south"
			})
		})
	}
}

// TestRestartWithRedisDown restarts the Enricher while Redis is down: the
// snapshot written on Close enriches, marked stale.
func TestRestartWithRedisDown(t *testing.T) {
	srv := startChildRedis(t)
	c := srv.client()
	hset(t, c, "iotgw:device:t1", "fleet", "north", "route", "r1")
	hset(t, c, "iotgw:route:r1", "name", "Coast")
	o := nsOptions(t, srv.addr, "iotgw:")
	e, err := New(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	enrichBounded(t, e, records("t1"))
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	srv.kill()

	start := time.Now()
	e2 := mustNew(t, o)
	t.Logf("New with Redis down took %s", time.Since(start))
	recs := records("t1", "ghost")
	enrichBounded(t, e2, recs)
	want := map[string]any{"fleet": "north", "route": map[string]any{"name": "Coast"}}
	if !reflect.DeepEqual(recs[0].Ref, want) || !recs[0].RefStale || recs[1].Ref != nil {
		t.Fatalf("from snapshot: %v stale %v; ghost %v", recs[0].Ref, recs[0].RefStale, recs[1].Ref)
	}

	srv.start()
	c = srv.client()
	hset(t, c, "iotgw:device:t1", "fleet", "east", "route", "r1")
	hset(t, c, "iotgw:route:r1", "name", "Coast")
	eventually(t, 10*time.Second, "recovery after restart", func() bool {
		r := enrichOne(t, e2, "t1")
		return !r.RefStale && r.Ref["fleet"] == "east"
	})
}

func TestKeyspaceConfigEnabled(t *testing.T) {
	srv := startChildRedis(t)
	c := srv.client()
	c.ConfigSet(context.Background(), "notify-keyspace-events", "E")
	e := mustNew(t, nsOptions(t, srv.addr, "iotgw:"))
	waitSubscribed(t, e)
	got, err := c.ConfigGet(context.Background(), "notify-keyspace-events").Result()
	if err != nil {
		t.Fatal(err)
	}
	if missingFlags(got["notify-keyspace-events"], keyspaceFlags+"E") != "" {
		t.Errorf("notify-keyspace-events = %q, want %s added to E", got["notify-keyspace-events"], keyspaceFlags)
	}
}

// syncBuffer is a log sink safe for the Enricher's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestKeyspaceConfigRefused runs against a Redis without CONFIG (as many
// managed services): a warning, and the channel still invalidates.
func TestKeyspaceConfigRefused(t *testing.T) {
	srv := startChildRedis(t, "--rename-command", "CONFIG", "")
	c := srv.client()
	hset(t, c, "iotgw:device:t1", "fleet", "north")
	var logs syncBuffer
	o := nsOptions(t, srv.addr, "iotgw:")
	e, err := New(context.Background(), o, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	waitSubscribed(t, e)
	if !strings.Contains(logs.String(), "cannot enable redis keyspace notifications") {
		t.Errorf("no warning about CONFIG; logs:\n%s", logs.String())
	}
	if r := enrichOne(t, e, "t1"); r.Ref["fleet"] != "north" {
		t.Fatalf("ref %v", r.Ref)
	}
	hset(t, c, "iotgw:device:t1", "fleet", "east")
	c.Publish(context.Background(), o.Invalidate.Channel, "iotgw:device:t1")
	eventually(t, 5*time.Second, "channel invalidation", func() bool { return enrichOne(t, e, "t1").Ref["fleet"] == "east" })
}

// TestSentinel reaches the master through a Sentinel.
func TestSentinel(t *testing.T) {
	master := startChildRedis(t)
	hset(t, master.client(), "iotgw:device:t1", "fleet", "north", "route", "r1")
	hset(t, master.client(), "iotgw:route:r1", "name", "Coast")
	_, mport, _ := net.SplitHostPort(master.addr)
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	body := "sentinel monitor mymaster 127.0.0.1 " + mport + " 1\nsentinel down-after-milliseconds mymaster 5000\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	sentinel := startChildRedis(t, conf, "--sentinel")
	o := nsOptions(t, "", "iotgw:")
	o.Redis.Addr, o.Redis.Addrs, o.Redis.MasterName = "", []string{sentinel.addr}, "mymaster"
	e := mustNew(t, o)
	waitSubscribed(t, e)
	r := enrichOne(t, e, "t1")
	if want := (map[string]any{"fleet": "north", "route": map[string]any{"name": "Coast"}}); !reflect.DeepEqual(r.Ref, want) || r.RefStale {
		t.Fatalf("via sentinel: %v stale %v", r.Ref, r.RefStale)
	}
	hset(t, master.client(), "iotgw:device:t1", "fleet", "east")
	eventually(t, 5*time.Second, "keyspace invalidation via sentinel", func() bool { return enrichOne(t, e, "t1").Ref["fleet"] == "east" })
}

// TestCluster uses a one-node Redis Cluster that owns every slot.
func TestCluster(t *testing.T) {
	srv := startChildRedis(t, "--cluster-enabled", "yes")
	c := srv.client()
	if err := c.Do(context.Background(), "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "cluster state ok", func() bool {
		info, _ := c.ClusterInfo(context.Background()).Result()
		return strings.Contains(info, "cluster_state:ok")
	})
	for i := range 50 {
		hset(t, c, fmt.Sprintf("iotgw:device:d%d", i), "route", fmt.Sprintf("r%d", i%5))
	}
	for i := range 5 {
		hset(t, c, fmt.Sprintf("iotgw:route:r%d", i), "name", fmt.Sprintf("route %d", i))
	}
	o := nsOptions(t, srv.addr, "iotgw:")
	o.Redis.Cluster = true
	e := mustNew(t, o)
	waitSubscribed(t, e)
	recs := batchOf(1000, "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d49", "ghost")
	enrichBounded(t, e, recs)
	if m, _ := recs[10].Ref["route"].(map[string]any); m["name"] != "route 4" {
		t.Fatalf("d49 via cluster: %v", recs[10].Ref)
	}
	if s := e.Stats(); s.RoundTrips != 2 {
		t.Errorf("cold batch via cluster: %d round trips, want 2", s.RoundTrips)
	}
	hset(t, c, "iotgw:device:d0", "route", "r3")
	eventually(t, 5*time.Second, "invalidation via cluster", func() bool {
		m, _ := enrichOne(t, e, "d0").Ref["route"].(map[string]any)
		return m["name"] == "route 3"
	})
}

// TestTLS reaches Redis over TLS with a private CA and a client
// certificate (tls-auth-clients yes).
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, dir, "ca", nil, nil)
	newCert(t, dir, "server", ca, caKey)
	newCert(t, dir, "client", ca, caKey)
	tlsAddr := deadAddr(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	srv := startChildRedis(t, "--tls-port", tlsPort,
		"--tls-cert-file", filepath.Join(dir, "server.pem"), "--tls-key-file", filepath.Join(dir, "server-key.pem"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"), "--tls-auth-clients", "yes")
	hset(t, srv.client(), "iotgw:device:t1", "fleet", "north")

	o := nsOptions(t, tlsAddr, "iotgw:")
	o.Redis.TLS = TLSOptions{CAFile: filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")}
	e := mustNew(t, o)
	waitSubscribed(t, e)
	if r := enrichOne(t, e, "t1"); r.Ref["fleet"] != "north" || r.RefStale {
		t.Fatalf("over TLS: %v stale %v", r.Ref, r.RefStale)
	}

	// Without the client certificate the server refuses: New still
	// succeeds, records are left unenriched, Redis is marked down.
	o.Redis.TLS.CertFile, o.Redis.TLS.KeyFile = "", ""
	o.Snapshot.Dir = t.TempDir()
	e2 := mustNew(t, o)
	if r := enrichOne(t, e2, "t1"); r.Ref != nil || !e2.Stats().RedisDown {
		t.Fatalf("without client cert: %v, stats %+v", r.Ref, e2.Stats())
	}
}

// newCert writes NAME.pem and NAME-key.pem: a CA when parent is nil,
// otherwise a leaf for 127.0.0.1 signed by parent.
func newCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(rand.Int64()),
		Subject:      pkix.Name{CommonName: "iotgw test " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// BenchmarkEnrichCold measures a 1000-record batch with an empty cache:
// 200 devices, 20 routes, two pipelines.
func BenchmarkEnrichCold(b *testing.B) {
	addr, c := sharedRedis(b)
	p := namespace(b, c)
	pipe := c.Pipeline()
	for i := range 200 {
		pipe.HSet(context.Background(), fmt.Sprintf("%sdevice:d%d", p, i), "route", fmt.Sprintf("r%d", i%20), "fleet", "north", "model", "X")
	}
	for i := range 20 {
		pipe.HSet(context.Background(), fmt.Sprintf("%sroute:r%d", p, i), "name", "route", "km", "100")
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		b.Fatal(err)
	}
	o := nsOptions(b, addr, p)
	o.Timeout = time.Second
	e := mustNew(b, o)
	waitSubscribed(b, e)
	batch := make([]*gateway.Record, 1000)
	for i := range batch {
		batch[i] = &gateway.Record{Device: fmt.Sprintf("d%d", i%200)}
	}
	rt0 := e.Stats().RoundTrips
	b.ResetTimer()
	for b.Loop() {
		e.mu.Lock()
		e.cache = newCache(o.Cache.MaxEntries)
		e.mu.Unlock()
		_ = e.Enrich(context.Background(), batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
	b.ReportMetric(float64(e.Stats().RoundTrips-rt0)/float64(b.N), "roundtrips/batch")
}
