package enrich

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// BenchmarkEnrichWarm is a 1000-record batch from 200 interleaved devices
// (each with a route lookup) whose data is all fresh in the cache: the
// egress's steady state, no Redis round trip. Redis itself is not needed.
func BenchmarkEnrichWarm(b *testing.B) {
	o := redisOptions(deadAddr(b), "")
	o.Invalidate = InvalidateOptions{}
	e, err := New(context.Background(), o, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	now := time.Now()
	e.mu.Lock()
	for i := range 200 {
		e.cache.set(fmt.Sprintf("iotgw:device:truck-%04d", i), hash{
			"fleet": "north", "model": "Actros 1845", "plate": fmt.Sprintf("HH-IG %d", i), "route": fmt.Sprintf("r%d", i%20),
		}, now.Add(time.Hour), now)
	}
	for i := range 20 {
		e.cache.set(fmt.Sprintf("iotgw:route:r%d", i), hash{"name": "Coast", "km": "118", "depot": "hh-billbrook"}, now.Add(time.Hour), now)
	}
	e.mu.Unlock()
	batch := make([]*gateway.Record, 1000)
	for i := range batch {
		batch[i] = &gateway.Record{Device: fmt.Sprintf("truck-%04d", i%200)}
	}
	_ = e.Enrich(context.Background(), batch) // composes the refs once
	before := e.Stats()
	b.ReportAllocs()
	for b.Loop() {
		_ = e.Enrich(context.Background(), batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
	if s := e.Stats(); s.Misses != before.Misses || s.RoundTrips != 0 || batch[0].Ref == nil {
		b.Fatalf("not a warm run: %+v", s)
	}
}

// BenchmarkEnrichFile is the same batch against the file backend.
func BenchmarkEnrichFile(b *testing.B) {
	e, err := New(context.Background(), DevOptions(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	batch := make([]*gateway.Record, 1000)
	for i := range batch {
		batch[i] = &gateway.Record{Device: fmt.Sprintf("truck-%04d", i%8+1)}
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = e.Enrich(context.Background(), batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
}
