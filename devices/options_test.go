package devices

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestOptionsDefaults(t *testing.T) {
	o := Options{File: "/var/lib/iotgw/devices.yaml"}
	o.SetDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Mode != ModeRegistry || o.Backend != BackendFile || o.CacheTTL != DefaultCacheTTL ||
		o.StatusFile != filepath.FromSlash("/var/lib/iotgw/devices.status.json") || o.Redis.KeyPrefix != "iotgw:" ||
		len(o.ACL.Publish) != 1 || len(o.ACL.Subscribe) != 2 {
		t.Errorf("defaults = %+v", o)
	}
}

func TestOptionsYAML(t *testing.T) {
	src := `
mode: open
backend: redis
cache_ttl: 90s
cache_size: 50
redis:
  addr: redis.local:6380
  db: 2
  timeout: 500ms
  tls: {enabled: true, server_name: redis.local}
acl:
  publish: ["fleet/{device}/#"]
  subscribe: []
`
	var o Options
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&o); err != nil {
		t.Fatal(err)
	}
	o.SetDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Mode != ModeOpen || o.CacheTTL != 90*time.Second || o.Redis.Timeout != 500*time.Millisecond ||
		o.Redis.DB != 2 || !o.Redis.TLS.Enabled || o.ACL.Publish[0] != "fleet/{device}/#" ||
		o.ACL.Subscribe == nil || len(o.ACL.Subscribe) != 0 {
		t.Errorf("decoded = %+v", o)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"mode", Options{Mode: "closed", File: "f"}, `auth.mode: "closed" is not one of registry, open`},
		{"backend", Options{Backend: "etcd", File: "f"}, `auth.backend: "etcd"`},
		{"file", Options{}, "auth.file: required"},
		{"db", Options{Backend: BackendRedis, Redis: RedisOptions{DB: -1}}, "auth.redis.db"},
		{"tls pair", Options{Backend: BackendRedis, Redis: RedisOptions{TLS: TLSOptions{CertFile: "c"}}}, "auth.redis.tls"},
		{"cache size", Options{File: "f", CacheSize: -1}, "auth.cache_size"},
		{"acl", Options{File: "f", ACL: ACLOptions{Publish: []string{"a/#/b"}}}, `auth.acl.publish[0] "a/#/b"`},
		{"two at once", Options{Mode: "x", Backend: "y"}, "auth.backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.SetDefaults()
			err := tt.o.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.want)
			}
		})
	}
}
