package enrich

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/gateway"
)

// TestMain silences go-redis's process-wide logger, which prints a line per
// failed dial to stderr; the tests dial dead addresses on purpose.
func TestMain(m *testing.M) {
	redis.SetLogger(RedisLogger{})
	os.Exit(m.Run())
}

// records returns one record per device id.
func records(devices ...string) []*gateway.Record {
	out := make([]*gateway.Record, len(devices))
	for i, d := range devices {
		out[i] = &gateway.Record{ID: fmt.Sprint(i), Device: d}
	}
	return out
}

// truck1Ref is what the example fleet gives truck-0001 with DevOptions.
var truck1Ref = map[string]any{
	"kind": "truck", "model": "Actros 1845", "plate": "HH-IG 101", "max_load_kg": "18000",
	"fleet":  map[string]any{"name": "Port Shuttle", "manager": "Kira Hansen", "cost_center": "4100"},
	"route":  map[string]any{"name": "Altenwerder - Bremen-Hemelingen", "roads": "A7, A261, A1", "depot": "hh-altenwerder", "km": "118"},
	"driver": map[string]any{"name": "Anna Schulz", "license": "CE", "phone": "+49 40 5550101"},
	"depot":  map[string]any{"name": "Hamburg-Altenwerder port logistics centre", "lat": "53.5040", "lon": "9.9330"},
}

func TestFileBackend(t *testing.T) {
	for _, file := range []string{"", "fleet.yaml", "fleet.csv"} {
		t.Run("file="+file, func(t *testing.T) {
			o := DevOptions()
			if file != "" {
				o.File = filepath.Join("..", "examples", "refdata", file)
			}
			e, err := New(context.Background(), o, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			recs := records("truck-0001", "truck-0008", "nobody", "truck-0001")
			if err := e.Enrich(context.Background(), recs); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(recs[0].Ref, truck1Ref) || recs[0].RefStale {
				t.Errorf("truck-0001 ref = %v (stale %v)\nwant %v", recs[0].Ref, recs[0].RefStale, truck1Ref)
			}
			// truck-0008 has no driver: no driver key at all.
			if _, ok := recs[1].Ref["driver"]; ok || recs[1].Ref["model"] != "eActros 300" {
				t.Errorf("truck-0008 ref = %v", recs[1].Ref)
			}
			if recs[2].Ref != nil || recs[2].RefStale {
				t.Errorf("unknown device: ref %v stale %v, want nil and false", recs[2].Ref, recs[2].RefStale)
			}
			s := e.Stats()
			if s.Hits != 3 || s.Unknown != 1 {
				t.Errorf("stats = %+v, want 3 hits 1 unknown", s)
			}
		})
	}
}

func TestLookupAsKeepsUnknownID(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.yaml")
	body := "devices:\n  a: {route: r1, depot: x}\n  b: {route: r9}\nroutes:\n  r1: {name: Coast}\ndepots: {}\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Backend, o.File = BackendFile, p
	o.Lookups = []Lookup{{Field: "route", As: "route_info"}, {Field: "depot"}}
	e, err := New(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	recs := records("a", "b")
	_ = e.Enrich(context.Background(), recs)
	want := []map[string]any{
		{"route": "r1", "route_info": map[string]any{"name": "Coast"}, "depot": "x"},
		{"route": "r9"},
	}
	for i := range want {
		if !reflect.DeepEqual(recs[i].Ref, want[i]) {
			t.Errorf("rec %d ref = %v, want %v", i, recs[i].Ref, want[i])
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Options)
		is   error
	}{
		{"invalid options", func(o *Options) { o.Cache.TTL = -1 }, ErrInvalidOptions},
		{"missing file", func(o *Options) { o.Backend, o.File = BackendFile, "/nonexistent/ref.yaml" }, os.ErrNotExist},
		{"bad file", func(o *Options) {
			o.Backend, o.File = BackendFile, filepath.Join(t.TempDir(), "bad.csv")
			_ = os.WriteFile(o.File, []byte("nodevice\n"), 0o600)
		}, ErrRefData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.mod(&o)
			_, err := New(context.Background(), o, nil)
			if !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
		})
	}
}

func TestBackendNoneAndClose(t *testing.T) {
	e, err := New(context.Background(), DefaultOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := records("a")
	if err := e.Enrich(context.Background(), recs); err != nil || recs[0].Ref != nil {
		t.Fatalf("none: err %v ref %v", err, recs[0].Ref)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := e.Enrich(context.Background(), recs); !errors.Is(err, gateway.ErrClosed) {
		t.Fatalf("Enrich after Close = %v, want ErrClosed", err)
	}
}

// maxBatch is the most an Enrich call may take while Redis is down or slow.
const maxBatch = 200 * time.Millisecond

// enrichBounded enriches recs and fails if the call took maxBatch or more
// because of Redis. A call that took that long while waiting on Redis for
// less than half of it was held up by a CPU-starved machine (tests of
// other packages run beside these), not by Redis: that is logged, not
// failed, so the property under test stays "Redis cannot slow Enrich".
func enrichBounded(t testing.TB, e *Enricher, recs []*gateway.Record) time.Duration {
	t.Helper()
	wait0 := e.Stats().RedisWait
	start := time.Now()
	if err := e.Enrich(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	wait := e.Stats().RedisWait - wait0
	switch {
	case wait >= maxBatch:
		t.Fatalf("Enrich of %d records waited %s on Redis (took %s)", len(recs), wait, d)
	case d >= maxBatch && wait >= d/2:
		t.Fatalf("Enrich of %d records took %s, %s of it waiting on Redis", len(recs), d, wait)
	case d >= maxBatch:
		t.Logf("Enrich of %d records took %s but waited only %s on Redis: the machine is starved of CPU", len(recs), d, wait)
	}
	return d
}

// deadAddr returns an address nothing listens on.
func deadAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func redisOptions(addr, snapDir string) Options {
	o := DefaultOptions()
	o.Backend = BackendRedis
	o.Redis.Addr = addr
	o.Lookups = []Lookup{{Field: "route"}}
	o.Snapshot.Dir = snapDir
	return o
}

// TestRedisUnreachableAtStart checks that New does not fail without Redis,
// that the snapshot is used (stale), and that Enrich returns at once.
func TestRedisUnreachableAtStart(t *testing.T) {
	dir := t.TempDir()
	doc := `{"version":1,"written_at":"2025-01-01T00:00:00Z","entries":{` +
		`"iotgw:device:t1":{"fleet":"north","route":"r1"},"iotgw:route:r1":{"name":"Coast"}}}`
	if err := os.WriteFile(filepath.Join(dir, snapshotFile), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), redisOptions(deadAddr(t), dir), nil)
	if err != nil {
		t.Fatalf("New with Redis down: %v", err)
	}
	defer e.Close()
	for range 3 {
		recs := records("t1", "t2")
		enrichBounded(t, e, recs)
		want := map[string]any{"fleet": "north", "route": map[string]any{"name": "Coast"}}
		if !reflect.DeepEqual(recs[0].Ref, want) || !recs[0].RefStale {
			t.Errorf("t1: ref %v stale %v, want %v stale", recs[0].Ref, recs[0].RefStale, want)
		}
		if recs[1].Ref != nil || recs[1].RefStale {
			t.Errorf("t2 (unknown): ref %v stale %v", recs[1].Ref, recs[1].RefStale)
		}
	}
	s := e.Stats()
	if !s.RedisDown || s.Stale != 3 || s.RoundTrips != 0 || s.Skipped == 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	o := redisOptions(deadAddr(t), dir)
	e, err := New(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	e.mu.Lock()
	e.cache.set("iotgw:device:a", hash{"x": "1"}, now.Add(time.Hour), now)
	e.cache.set("iotgw:device:gone", nil, now.Add(time.Hour), now)
	e.mu.Unlock()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, snapshotFile))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]hash{"iotgw:device:a": {"x": "1"}}; !reflect.DeepEqual(doc.Entries, want) {
		t.Errorf("snapshot entries = %v, want %v", doc.Entries, want)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*.tmp"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	e2, err := New(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if e2.Stats().Entries != 1 {
		t.Errorf("restarted cache has %d entries, want 1", e2.Stats().Entries)
	}
}

func TestCorruptSnapshotIgnored(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, snapshotFile), []byte(`{"version":1,"entries":`), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), redisOptions(deadAddr(t), dir), nil)
	if err != nil {
		t.Fatalf("New with corrupt snapshot: %v", err)
	}
	defer e.Close()
	if n := e.Stats().Entries; n != 0 {
		t.Errorf("entries = %d", n)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(`{"version":1,"written_at":"2025-01-01T00:00:00Z","entries":{"k":{"a":"b"}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"entries":{"k":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := decodeSnapshot(b)
		if err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error %v is not ErrSnapshot", err)
			}
			return
		}
		if doc.Version != snapshotVersion {
			t.Fatalf("accepted version %d", doc.Version)
		}
	})
}

func TestMissingFlags(t *testing.T) {
	tests := []struct{ have, want string }{
		{"", "Kghx"},
		{"Kh", "gx"},
		{"AKE", ""},
		{"xgE", "Kh"},
		{"KA", ""},
	}
	for _, tt := range tests {
		if got := missingFlags(tt.have, keyspaceFlags); got != tt.want {
			t.Errorf("missingFlags(%q) = %q, want %q", tt.have, got, tt.want)
		}
	}
}

func TestUnusableSnapshotDirDoesNotFailNew(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), redisOptions(deadAddr(t), filepath.Join(file, "enrich")), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
