package enrich

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDefaultOptionsValid(t *testing.T) {
	for name, o := range map[string]Options{"default": DefaultOptions(), "dev": DevOptions()} {
		if err := o.Validate(); err != nil {
			t.Errorf("%s: Validate: %v", name, err)
		}
	}
	o := DefaultOptions()
	if !o.Invalidate.Keyspace || o.Invalidate.Channel != DefaultChannel || o.Backend != BackendNone {
		t.Errorf("defaults: %+v", o)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		wants []string // substrings of the error; none means valid
	}{
		{"redis minimal", "backend: redis\nredis: {addr: 'redis:6379'}", nil},
		{"sentinel", "backend: redis\nredis: {addrs: ['s1:26379', 's2:26379'], master_name: mymaster, db: 2}", nil},
		{"lookups defaulted", "lookups: [{field: route}, {field: origin, table: depots, key: 'iotgw:depot:{id}', as: origin_depot}]", nil},
		{"unknown backend", "backend: mongo", []string{"enrich.backend: unknown backend \"mongo\""}},
		{"bad ttl", "cache: {ttl: -1s}", []string{"enrich.cache.ttl: must be positive"}},
		{"bad sizes", "cache: {max_entries: -5, negative_ttl: -1s}\ntimeout: -1ms", []string{
			"enrich.cache.max_entries: must be positive", "enrich.cache.negative_ttl: must be positive", "enrich.timeout: must be positive"}},
		{"key without placeholder", "key: 'iotgw:device'", []string{"enrich.key:", "placeholder"}},
		{"key wrong placeholder", "key: 'iotgw:{id}'", []string{"enrich.key: placeholder must be {device}"}},
		{"key two placeholders", "key: 'iotgw:{device}:{x}'", []string{"enrich.key:", "exactly one"}},
		{"lookup without field", "lookups: [{key: 'a:{b}'}]", []string{"enrich.lookups[0].field: required"}},
		{"lookup duplicate as", "lookups: [{field: a, as: x}, {field: b, as: x}]", []string{"enrich.lookups[1].as: \"x\" is already used"}},
		{"lookup bad key", "lookups: [{field: a, key: 'nope'}]", []string{"enrich.lookups[0].key:"}},
		{"lookup devices table", "lookups: [{field: a, table: devices}]", []string{"enrich.lookups[0].table:"}},
		{"file ext", "backend: file\nfile: data.json", []string{"enrich.file:", "unknown format"}},
		{"bad addr", "redis: {addr: 'localhost'}", []string{"enrich.redis.addr: \"localhost\" is not host:port"}},
		{"cluster db", "redis: {addrs: ['a:1', 'b:2'], db: 3}", []string{"enrich.redis.db: must be 0 with Redis Cluster"}},
		{"tls pair", "redis: {tls: {cert_file: c.pem}}", []string{"enrich.redis.tls.cert_file:"}},
		{"backoff order", "redis: {min_backoff: 5s, max_backoff: 1s}", []string{"enrich.redis.max_backoff:"}},
		{"channel space", "invalidate: {channel: 'a b'}", []string{"enrich.invalidate.channel:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			dec := yaml.NewDecoder(strings.NewReader(tt.yaml))
			dec.KnownFields(true)
			if err := dec.Decode(&o); err != nil {
				t.Fatalf("decode: %v", err)
			}
			o.SetDefaults()
			err := o.Validate()
			if len(tt.wants) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tt.wants)
			}
			if !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("error %v does not match ErrInvalidOptions", err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestSetDefaultsLookups(t *testing.T) {
	o := Options{Lookups: []Lookup{{Field: "route"}, {Field: "driver", As: "who", Key: "d:{id}", Table: "people"}}}
	o.SetDefaults()
	want := []Lookup{
		{Field: "route", Key: "iotgw:route:{route}", As: "route", Table: "routes"},
		{Field: "driver", Key: "d:{id}", As: "who", Table: "people"},
	}
	for i := range want {
		if o.Lookups[i] != want[i] {
			t.Errorf("lookup %d = %+v, want %+v", i, o.Lookups[i], want[i])
		}
	}
	if o.Cache.TTL != DefaultTTL || o.Timeout != DefaultTimeout || o.Redis.Addr != DefaultRedisAddr || o.Snapshot.Interval != time.Minute {
		t.Errorf("defaults not applied: %+v", o)
	}
}

func TestKeyTemplate(t *testing.T) {
	tests := []struct {
		pattern, id, key, glob string
	}{
		{"iotgw:device:{device}", "truck-1", "iotgw:device:truck-1", `iotgw:device:*`},
		{"{device}", "x", "x", "*"},
		{"ref:{device}:v2", "a", "ref:a:v2", "ref:*:v2"},
		{"we*ird[1]:{d}", "a", "we*ird[1]:a", `we\*ird\[1\]:*`},
	}
	for _, tt := range tests {
		if _, err := parseTemplate(tt.pattern); err != nil {
			t.Fatalf("parseTemplate(%q): %v", tt.pattern, err)
		}
		tm := mustTemplate(tt.pattern)
		if got := tm.key(tt.id); got != tt.key {
			t.Errorf("key(%q, %q) = %q, want %q", tt.pattern, tt.id, got, tt.key)
		}
		if got := string(tm.appendKey(nil, tt.id)); got != tt.key {
			t.Errorf("appendKey = %q, want %q", got, tt.key)
		}
		if got := tm.pattern(); got != tt.glob {
			t.Errorf("pattern(%q) = %q, want %q", tt.pattern, got, tt.glob)
		}
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tls  TLSOptions
		want string
	}{
		{TLSOptions{CAFile: filepath.Join(dir, "missing.pem")}, "enrich.redis.tls.ca_file:"},
		{TLSOptions{CAFile: notPEM}, "holds no PEM certificate"},
		{TLSOptions{CertFile: notPEM, KeyFile: notPEM}, "enrich.redis.tls.cert_file:"},
	}
	for _, tt := range tests {
		o := DefaultOptions()
		o.Backend = BackendRedis
		o.Redis.TLS = tt.tls
		if _, err := New(context.Background(), o, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want %q", tt.tls, err, tt.want)
		}
	}
	if !(TLSOptions{InsecureSkipVerify: true}).on() || (TLSOptions{}).on() {
		t.Error("TLS on/off rule broken")
	}
}
