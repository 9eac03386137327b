//go:build integration

package devices

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisAddr is the test Redis: IOTGW_TEST_REDIS, or the one `make redis-up`
// starts. These tests fail rather than skip when it is unreachable.
func redisAddr() string {
	if a := os.Getenv("IOTGW_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:16379"
}

// redisBackend gives each shared store its own key prefix, deleted when
// the test ends, so runs do not see each other's devices.
func redisBackend(t *testing.T) backend {
	c := redis.NewClient(&redis.Options{Addr: redisAddr()})
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("test Redis at %s (IOTGW_TEST_REDIS) unreachable: %v; start it with `make redis-up`", redisAddr(), err)
	}
	run := "iotgw-test:" + strings.ReplaceAll(t.Name(), "/", "_") + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := c.Keys(ctx, run+"*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return backend{name: "redis", open: func(t *testing.T, mode, shared string) Registry {
		t.Helper()
		reg, err := Open(context.Background(), Options{
			Mode: mode, Backend: BackendRedis,
			Redis: RedisOptions{Addr: redisAddr(), KeyPrefix: run + shared + ":"},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { reg.Close() })
		return reg
	}}
}

func TestRedisRegistry(t *testing.T) {
	runRegistrySuite(t, redisBackend(t))
}

func TestRedisLayout(t *testing.T) {
	ctx := context.Background()
	b := redisBackend(t)
	reg := b.open(t, ModeRegistry, "layout")
	if err := Add(ctx, reg, Device{ID: "truck-1", Meta: map[string]string{"fleet": "north"}},
		Credentials{Password: "pw", PSK: []byte("0123456789abcdef")}); err != nil {
		t.Fatal(err)
	}
	c := reg.(*registry).st.(*redisStore)
	h, err := c.c.HGetAll(ctx, c.devKey("truck-1")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h["secret"], "$argon2id$v=19$") || h["psk"] != "30313233343536373839616263646566" ||
		h["meta.fleet"] != "north" || h["disabled"] != "0" || h["created"] == "" {
		t.Errorf("hash = %v", h)
	}
	if ok, _ := c.c.SIsMember(ctx, c.setKey(), "truck-1").Result(); !ok {
		t.Error("id not in the devices set")
	}
	if err := reg.SetStatus(ctx, "truck-1", true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.c.SIsMember(ctx, c.onlineKey(), "truck-1").Result(); !ok {
		t.Error("id not in the online set")
	}
}

func TestRedisUnreachable(t *testing.T) {
	_, err := Open(context.Background(), Options{Backend: BackendRedis, Redis: RedisOptions{Addr: "127.0.0.1:1", Timeout: 200 * time.Millisecond}}, nil)
	if err == nil || !strings.Contains(err.Error(), "auth.redis.addr") {
		t.Errorf("Open with no server = %v, want an error naming auth.redis.addr", err)
	}
}
