//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func redisAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("IOTGW_TEST_REDIS")
	if addr == "" {
		addr = "127.0.0.1:16379"
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("Redis test server %s unreachable (run `make redis-up` or set IOTGW_TEST_REDIS): %v", addr, err)
	}
	c.Close()
	return addr
}

// TestEnrichmentFromRedis: reference data written to Redis arrives in the
// Kafka record's ref, including a second-level lookup, and an update in
// Redis reaches later records without a restart.
func TestEnrichmentFromRedis(t *testing.T) {
	broker := kafkaAddr(t)
	raddr := redisAddr(t)
	prefix := uniqueTopicPrefix(t)
	ns := prefix + ":" // keep this test's keys apart
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	ctx := context.Background()
	dev := "truck-e2e"
	if err := rdb.HSet(ctx, ns+"device:"+dev, "fleet", "north", "driver", "Anna", "route", "r1").Err(); err != nil {
		t.Fatal(err)
	}
	rdb.HSet(ctx, ns+"route:r1", "name", "A7 Hamburg-Kiel", "km", "96")
	t.Cleanup(func() { rdb.Del(ctx, ns+"device:"+dev, ns+"route:r1") })

	cfg := baseConfig(broker, t.TempDir(), prefix) + fmt.Sprintf(`
enrich:
  backend: redis
  redis: {addr: "%s"}
  key: "%sdevice:{device}"
  lookups:
    - {field: route, key: "%sroute:{route}", as: route}
  cache: {ttl: 1h}
`, raddr, ns, ns)
	gw := startGateway(t, cfg)
	host, port, _ := net.SplitHostPort(gw.MQTT)
	run(t, nil, "mosquitto_pub", "-h", host, "-p", port, "-i", dev, "-q", "1", "-t", "devices/"+dev+"/position", "-m", `{"seq":1}`)

	msgs := consume(t, broker, prefix+".position", 1, 30*time.Second)
	var env struct {
		Ref map[string]any `json:"ref"`
	}
	if err := json.Unmarshal(msgs[0].Value, &env); err != nil {
		t.Fatal(err)
	}
	route, _ := env.Ref["route"].(map[string]any)
	if env.Ref["fleet"] != "north" || env.Ref["driver"] != "Anna" || route["name"] != "A7 Hamburg-Kiel" {
		t.Fatalf("ref = %v\n%s", env.Ref, msgs[0].Value)
	}

	// An update reaches the cache through invalidation, well before the 1h TTL.
	if err := rdb.HSet(ctx, ns+"device:"+dev, "driver", "Ben").Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for seq := 2; ; seq++ {
		run(t, nil, "mosquitto_pub", "-h", host, "-p", port, "-i", dev, "-q", "1", "-t", "devices/"+dev+"/position", "-m", fmt.Sprintf(`{"seq":%d}`, seq))
		msgs = consume(t, broker, prefix+".position", seq, 30*time.Second)
		found := false
		for _, m := range msgs {
			if strings.Contains(string(m.Value), `"driver":"Ben"`) {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("updated reference data never reached the records")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
