//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/simulator"
)

// TestRedisKilledUnderLoad: the gateway enriches from its own Redis; Redis
// is SIGKILLed mid-load. Ingest and delivery go on (every acked message
// arrives), records after the kill are enriched from the cache and marked
// stale.
func TestRedisKilledUnderLoad(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	port := freePort(t)
	rs := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := rs.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(func() { rs.Process.Kill(); rs.Wait() })
	raddr := fmt.Sprintf("127.0.0.1:%d", port)
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("own redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 1; i <= 5; i++ {
		rdb.HSet(ctx, fmt.Sprintf("iotgw:device:truck-%04d", i), "fleet", "north", "driver", fmt.Sprintf("driver %d", i))
	}

	cfg := baseConfig(broker, t.TempDir(), prefix) + fmt.Sprintf(`
enrich:
  backend: redis
  redis: {addr: "%s", min_backoff: 50ms, max_backoff: 500ms}
  cache: {ttl: 1s}
`, raddr)
	gw := startGateway(t, cfg, "IOTGW_LOG_LEVEL=warn")

	go func() {
		time.Sleep(3 * time.Second)
		rs.Process.Kill()
	}()
	rep, err := simulator.Run(ctx, simulator.Options{Broker: gw.MQTT, Trucks: 5, Rate: 50, Duration: 8 * time.Second,
		Protocol: "3.1.1", QoS: simulator.QoS(1), Seed: 4})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Refused+rep.Errors > 0 {
		t.Errorf("ingest suffered while Redis died: refused %d, errors %d", rep.Refused, rep.Errors)
	}
	waitDrained(t, gw, 60*time.Second)
	res, err := simulator.Verify(ctx, simulator.VerifyOptions{Brokers: []string{broker}, Topics: simTopics(prefix), Report: rep, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Missing != 0 || !res.OK() {
		t.Fatalf("acknowledged messages missing with Redis dead: %+v", res)
	}
	msgs := consume(t, broker, prefix+".position", 100, 30*time.Second)
	var fresh, stale int
	for _, m := range msgs {
		var env struct {
			Ref      map[string]any `json:"ref"`
			RefStale bool           `json:"ref_stale"`
		}
		json.Unmarshal(m.Value, &env)
		if env.Ref != nil && env.Ref["fleet"] == "north" {
			if env.RefStale {
				stale++
			} else {
				fresh++
			}
		}
	}
	t.Logf("Redis killed at 3s of 8s: %d acked, all delivered; position records enriched fresh %d, stale %d", rep.Acked, fresh, stale)
	if fresh == 0 || stale == 0 {
		t.Errorf("want records enriched before the kill (fresh) and after it from cache (stale): fresh %d stale %d", fresh, stale)
	}
}
