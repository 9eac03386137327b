package enrich

import (
	"fmt"
	"testing"
	"time"
)

func TestCacheBoundEvictsLeastRecentlyUsed(t *testing.T) {
	c := newCache(3)
	now := time.Now()
	exp := now.Add(time.Minute)
	for _, k := range []string{"a", "b", "c"} {
		c.set(k, hash{"k": k}, exp, now)
	}
	c.get("a") // a is now the most recent; b the least
	c.set("d", hash{"k": "d"}, exp, now)
	if c.len() != 3 {
		t.Fatalf("len = %d, want 3", c.len())
	}
	if c.peek("b") != nil {
		t.Errorf("b survived; the least recently used should go")
	}
	for _, k := range []string{"a", "c", "d"} {
		if c.peek(k) == nil {
			t.Errorf("%s evicted", k)
		}
	}
	if c.evicted != 1 {
		t.Errorf("evicted = %d, want 1", c.evicted)
	}
	var order []string
	c.each(func(k string, _ hash) { order = append(order, k) })
	if fmt.Sprint(order) != "[d a c]" {
		t.Errorf("recency order = %v, want [d a c]", order)
	}
}

func TestCacheEvictedEntryIsMarked(t *testing.T) {
	c := newCache(1)
	now := time.Now()
	a := c.set("a", hash{"x": "1"}, now.Add(time.Minute), now)
	c.set("b", nil, now.Add(time.Minute), now)
	if !a.removed {
		t.Fatal("evicted entry not marked removed; refs built from it would look valid")
	}
}

func TestCacheTTL(t *testing.T) {
	c := newCache(10)
	now := time.Now()
	e := c.set("a", hash{"x": "1"}, now.Add(time.Second), now)
	tests := []struct {
		at    time.Duration
		fresh bool
	}{{0, true}, {999 * time.Millisecond, true}, {time.Second, false}, {time.Hour, false}}
	for _, tt := range tests {
		if got := e.fresh(now.Add(tt.at)); got != tt.fresh {
			t.Errorf("fresh at +%s = %v, want %v", tt.at, got, tt.fresh)
		}
	}
	// Expired entries are kept: they are the fallback while Redis is away.
	if c.get("a") == nil {
		t.Fatal("expired entry dropped")
	}
}

func TestCacheSetSameFieldsKeepsGeneration(t *testing.T) {
	c := newCache(10)
	now := time.Now()
	e := c.set("a", hash{"x": "1"}, now, now)
	gen, version := e.gen, c.version
	e.ref = map[string]any{"x": "1"}
	c.set("a", hash{"x": "1"}, now.Add(time.Minute), now)
	if e.gen != gen || e.ref == nil || c.version != version {
		t.Errorf("refresh with equal fields changed gen/ref/version")
	}
	if !e.fresh(now.Add(time.Second)) {
		t.Errorf("refresh did not extend expiry")
	}
	c.set("a", hash{"x": "2"}, now.Add(time.Minute), now)
	if e.gen == gen || e.ref != nil || c.version == version {
		t.Errorf("changed fields kept gen/ref/version")
	}
	c.set("a", nil, now.Add(time.Minute), now)
	if e.fields != nil {
		t.Errorf("negative set kept fields")
	}
}

func TestCacheInvalidate(t *testing.T) {
	c := newCache(10)
	now := time.Now()
	exp := now.Add(time.Hour)
	c.set("a", hash{"x": "1"}, exp, now)
	c.set("b", hash{"x": "2"}, exp, now)
	c.set("n", nil, exp, now)
	if !c.invalidate("a") || c.invalidate("zz") {
		t.Fatal("invalidate reported wrong presence")
	}
	if c.peek("a").fresh(now) || !c.peek("b").fresh(now) {
		t.Fatal("invalidate hit the wrong entry")
	}
	if c.peek("a").fields["x"] != "1" {
		t.Fatal("invalidate dropped the data; it must stay as the stale fallback")
	}
	if n := c.invalidateAll(); n != 3 {
		t.Fatalf("invalidateAll = %d, want 3", n)
	}
	for _, k := range []string{"a", "b", "n"} {
		if c.peek(k).fresh(now) {
			t.Errorf("%s fresh after invalidateAll", k)
		}
	}
	var got []string
	c.each(func(k string, _ hash) { got = append(got, k) })
	if len(got) != 2 {
		t.Errorf("each visited %v; negative entries have no fields to snapshot", got)
	}
}
