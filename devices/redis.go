package devices

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis layout (prefix defaults to "iotgw:"):
//
//	{prefix}dev:{id}   hash: secret, psk (hex), created, disabled ("1"/"0"),
//	                   meta.{key} per metadata field, online ("1"/"0"),
//	                   last_seen
//	{prefix}devices    set of registered ids
//	{prefix}online     set of ids currently online
//
// Times are UTC with nine fraction digits, so they sort as strings. A hash
// without "created" holds only status (open mode tracks unregistered ids).
// Every change is one Lua script, so it is atomic against other gateways
// and `iotgw devices` runs sharing the server. Redis Cluster is not
// supported: the keys of one change are in different slots.
const redisTime = "2006-01-02T15:04:05.000000000Z"

const metaField = "meta."

// putScript adds or replaces one device. KEYS: hash, devices set. ARGV: id,
// replace, created, secret ("" keeps), psk ("" keeps), disabled, then meta
// key/value pairs. Returns the Outcome.
var putScript = redis.NewScript(`
local exists = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
if exists and ARGV[2] ~= '1' then return 3 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 5) == 'meta.' or (not exists and f ~= 'online' and f ~= 'last_seen') then
    redis.call('HDEL', KEYS[1], f)
  end
end
if not exists then
  redis.call('HSET', KEYS[1], 'created', ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[1])
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'secret', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'psk', ARGV[5]) end
redis.call('HSET', KEYS[1], 'disabled', ARGV[6])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], 'meta.' .. ARGV[i], ARGV[i + 1]) end
if exists then return 2 end
return 1
`)

// modifyScript sets fields of a registered device. KEYS: hash, devices
// set. ARGV: id, then field/value pairs; an empty value deletes the field.
// Returns 0 if the device is not registered.
var modifyScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
`)

// removeScript deletes a device. KEYS: hash, devices set, online set.
var removeScript = redis.NewScript(`
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
`)

// statusScript records a connect or disconnect unless a newer event is
// already recorded. KEYS: hash, devices set, online set. ARGV: id, online,
// time, track unregistered. Returns 0 for an unknown device.
var statusScript = redis.NewScript(`
if ARGV[4] ~= '1' and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
local last = redis.call('HGET', KEYS[1], 'last_seen')
if last and last > ARGV[3] then return 1 end
redis.call('HSET', KEYS[1], 'online', ARGV[2], 'last_seen', ARGV[3])
if ARGV[2] == '1' then redis.call('SADD', KEYS[3], ARGV[1])
else redis.call('SREM', KEYS[3], ARGV[1]) end
return 1
`)

// redisStore is the Redis backend, shared by several gateway instances.
type redisStore struct {
	c      *redis.Client
	prefix string
	track  bool
	log    *slog.Logger
}

var _ store = (*redisStore)(nil)

func openRedis(ctx context.Context, o RedisOptions, track bool, logger *slog.Logger) (*redisStore, error) {
	ro := &redis.Options{
		Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
		DialTimeout: o.Timeout, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	}
	if o.TLS.Enabled {
		tc, err := tlsConfig(o.TLS)
		if err != nil {
			return nil, err
		}
		ro.TLSConfig = tc
	}
	c := redis.NewClient(ro)
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("device registry: redis at %s (auth.redis.addr): %w", o.Addr, err)
	}
	return &redisStore{c: c, prefix: o.KeyPrefix, track: track, log: logger}, nil
}

func tlsConfig(o TLSOptions) (*tls.Config, error) {
	tc := &tls.Config{ServerName: o.ServerName, InsecureSkipVerify: o.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("auth.redis.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("auth.redis.tls.ca_file %s: no PEM certificates", o.CAFile)
		}
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("auth.redis.tls.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func (s *redisStore) devKey(id string) string { return s.prefix + "dev:" + id }
func (s *redisStore) setKey() string          { return s.prefix + "devices" }
func (s *redisStore) onlineKey() string       { return s.prefix + "online" }

func (s *redisStore) lookup(ctx context.Context, id string) (record, error) {
	v, err := s.c.HMGet(ctx, s.devKey(id), "created", "secret", "psk", "disabled").Result()
	if err != nil {
		return record{}, err
	}
	if v[0] == nil {
		return record{}, ErrUnknownDevice
	}
	str := func(x any) string { s, _ := x.(string); return s }
	rec := record{secret: str(v[1]), disabled: str(v[3]) == "1"}
	if p := str(v[2]); p != "" {
		if rec.psk, err = hex.DecodeString(p); err != nil {
			return record{}, fmt.Errorf("psk in redis is not hex")
		}
	}
	return rec, nil
}

// parseDevice builds a Device from a hash; ok is false when the hash holds
// neither a registered device nor (when tracking) status.
func (s *redisStore) parseDevice(id string, h map[string]string) (Device, bool) {
	d := Device{ID: id}
	created, registered := h["created"]
	if !registered && (!s.track || h["last_seen"] == "") {
		return d, false
	}
	d.Registered = registered
	d.Created = parseRedisTime(created)
	d.Disabled = h["disabled"] == "1"
	d.HasPSK = h["psk"] != ""
	d.Online = h["online"] == "1"
	d.LastSeen = parseRedisTime(h["last_seen"])
	for k, v := range h {
		if mk, ok := strings.CutPrefix(k, metaField); ok {
			if d.Meta == nil {
				d.Meta = map[string]string{}
			}
			d.Meta[mk] = v
		}
	}
	return d, true
}

func parseRedisTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(redisTime, s)
	if err != nil {
		t, _ = time.Parse(time.RFC3339Nano, s)
	}
	return t.UTC()
}

func formatRedisTime(t time.Time) string { return t.UTC().Format(redisTime) }

func (s *redisStore) get(ctx context.Context, id string) (Device, error) {
	h, err := s.c.HGetAll(ctx, s.devKey(id)).Result()
	if err != nil {
		return Device{}, err
	}
	d, ok := s.parseDevice(id, h)
	if !ok {
		return Device{}, ErrUnknownDevice
	}
	return d, nil
}

// listBatch is how many hashes one pipeline fetches.
const listBatch = 500

func (s *redisStore) list(ctx context.Context) ([]Device, error) {
	ids, err := s.c.SMembers(ctx, s.setKey()).Result()
	if err != nil {
		return nil, err
	}
	if s.track {
		online, err := s.c.SMembers(ctx, s.onlineKey()).Result()
		if err != nil {
			return nil, err
		}
		ids = append(ids, online...)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	out := make([]Device, 0, len(ids))
	for chunk := range slices.Chunk(ids, listBatch) {
		pipe := s.c.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(chunk))
		for i, id := range chunk {
			cmds[i] = pipe.HGetAll(ctx, s.devKey(id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		for i, id := range chunk {
			if d, ok := s.parseDevice(id, cmds[i].Val()); ok {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

func (s *redisStore) put(ctx context.Context, entries []storedEntry, replace bool) ([]Outcome, error) {
	if err := putScript.Load(ctx, s.c).Err(); err != nil {
		return nil, err
	}
	out := make([]Outcome, 0, len(entries))
	now := time.Now()
	for chunk := range slices.Chunk(entries, listBatch) {
		pipe := s.c.Pipeline()
		cmds := make([]*redis.Cmd, len(chunk))
		for i, e := range chunk {
			created := e.created
			if created.IsZero() {
				created = now
			}
			psk := ""
			if e.psk != nil {
				psk = hex.EncodeToString(e.psk)
			}
			args := []any{e.id, boolArg(replace), formatRedisTime(created), e.secret, psk, boolArg(e.disabled)}
			for _, k := range slices.Sorted(maps.Keys(e.meta)) {
				args = append(args, k, e.meta[k])
			}
			cmds[i] = putScript.EvalSha(ctx, pipe, []string{s.devKey(e.id), s.setKey()}, args...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		for _, c := range cmds {
			n, err := c.Int()
			if err != nil {
				return nil, err
			}
			out = append(out, Outcome(n))
		}
	}
	return out, nil
}

func (s *redisStore) remove(ctx context.Context, id string) error {
	n, err := removeScript.Run(ctx, s.c, []string{s.devKey(id), s.setKey(), s.onlineKey()}, id).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrUnknownDevice
	}
	return nil
}

func (s *redisStore) modify(ctx context.Context, id string, c change) error {
	args := []any{id}
	if c.secret != nil {
		args = append(args, "secret", *c.secret)
	}
	if c.psk != nil {
		args = append(args, "psk", hex.EncodeToString(*c.psk))
	}
	if c.disabled != nil {
		args = append(args, "disabled", boolArg(*c.disabled))
	}
	n, err := modifyScript.Run(ctx, s.c, []string{s.devKey(id), s.setKey()}, args...).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrUnknownDevice
	}
	return nil
}

func (s *redisStore) setStatus(ctx context.Context, id string, online bool, at time.Time) error {
	n, err := statusScript.Run(ctx, s.c, []string{s.devKey(id), s.setKey(), s.onlineKey()},
		id, boolArg(online), formatRedisTime(at), boolArg(s.track)).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrUnknownDevice
	}
	return nil
}

func (s *redisStore) close() error {
	if err := s.c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
