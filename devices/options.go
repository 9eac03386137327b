package devices

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Authentication modes (auth.mode).
const (
	// ModeRegistry accepts only registered, enabled devices with the right
	// password. It is the default.
	ModeRegistry = "registry"
	// ModeOpen accepts any device with a valid id and any password, for
	// `iotgw dev` and closed test networks. The registry is still used for
	// status tracking and PSKs; registered devices' passwords and disabled
	// flags are ignored by Authenticate.
	ModeOpen = "open"
)

// Registry backends (auth.backend).
const (
	BackendFile  = "file"
	BackendRedis = "redis"
)

// Defaults.
const (
	DefaultCacheTTL     = 5 * time.Minute
	DefaultCacheSize    = 100_000
	DefaultStatusFlush  = 5 * time.Second
	DefaultRedisAddr    = "127.0.0.1:6379"
	DefaultRedisPrefix  = "iotgw:"
	DefaultRedisTimeout = 3 * time.Second
)

// Options configure device authentication; the gateway's config file holds
// them as the auth: section, so every key below is auth.<key>.
type Options struct {
	// Mode is "registry" (default: only registered devices with the right
	// password) or "open" (any valid device id is accepted; for dev only).
	Mode string `yaml:"mode"`

	// Backend stores the registry: "file" (default; one YAML file, for a
	// single gateway) or "redis" (shared by several gateway instances).
	Backend string `yaml:"backend"`

	// File is the YAML registry for the file backend. It is created on the
	// first write, with mode 0600 because it holds PSKs in clear. Required
	// when backend is file.
	File string `yaml:"file"`

	// StatusFile is where the file backend keeps online/last-seen status;
	// default: beside File, named <file name without extension>.status.json.
	StatusFile string `yaml:"status_file"`

	// StatusFlush is how often the file backend writes changed status to
	// StatusFile (default 5s); status is not written per connect.
	StatusFlush time.Duration `yaml:"status_flush"`

	// Redis is the server for the redis backend.
	Redis RedisOptions `yaml:"redis"`

	// ACL limits the topics each device may use.
	ACL ACLOptions `yaml:"acl"`

	// CacheTTL is how long a successful password verification is remembered
	// (default 5m); a negative value disables the cache, so every attempt
	// runs argon2id (about 40 ms).
	CacheTTL time.Duration `yaml:"cache_ttl"`

	// CacheSize bounds the verification cache, in devices (default 100000).
	CacheSize int `yaml:"cache_size"`
}

// RedisOptions configure the Redis connection of the redis backend.
type RedisOptions struct {
	// Addr is host:port (default 127.0.0.1:6379).
	Addr string `yaml:"addr"`
	// Username for Redis ACL authentication (Redis 6+); empty for none.
	Username string `yaml:"username"`
	// Password for AUTH; empty for none. Prefer the environment override
	// IOTGW_AUTH_REDIS_PASSWORD to writing it in the file.
	Password string `yaml:"password"`
	// DB is the database number (default 0).
	DB int `yaml:"db"`
	// KeyPrefix starts every key iotgw writes (default "iotgw:"), so several
	// deployments can share one Redis.
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds connecting and each command (default 3s).
	Timeout time.Duration `yaml:"timeout"`
	// TLS configures an encrypted connection; off unless enabled.
	TLS TLSOptions `yaml:"tls"`
}

// TLSOptions configure TLS to Redis.
type TLSOptions struct {
	// Enabled turns TLS on.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle to verify the server with; empty means the
	// system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key, for servers
	// that require one; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables server certificate checks; tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// ACLOptions are the topic patterns of NewACL. An absent list gets the
// default; an empty list ([]) allows nothing.
type ACLOptions struct {
	// Publish lists the topics a device may publish to
	// (default ["devices/{device}/#"]).
	Publish []string `yaml:"publish"`
	// Subscribe lists the filters a device may subscribe within
	// (default ["devices/{device}/commands", "devices/{device}/commands/#"]).
	Subscribe []string `yaml:"subscribe"`
}

// SetDefaults fills unset fields with their defaults.
func (o *Options) SetDefaults() {
	if o.Mode == "" {
		o.Mode = ModeRegistry
	}
	if o.Backend == "" {
		o.Backend = BackendFile
	}
	if o.StatusFile == "" && o.File != "" {
		base := strings.TrimSuffix(filepath.Base(o.File), filepath.Ext(o.File))
		o.StatusFile = filepath.Join(filepath.Dir(o.File), base+".status.json")
	}
	if o.StatusFlush == 0 {
		o.StatusFlush = DefaultStatusFlush
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Redis.Addr == "" {
		o.Redis.Addr = DefaultRedisAddr
	}
	if o.Redis.KeyPrefix == "" {
		o.Redis.KeyPrefix = DefaultRedisPrefix
	}
	if o.Redis.Timeout == 0 {
		o.Redis.Timeout = DefaultRedisTimeout
	}
	if o.ACL.Publish == nil {
		o.ACL.Publish = append([]string(nil), DefaultPublishACL...)
	}
	if o.ACL.Subscribe == nil {
		o.ACL.Subscribe = append([]string(nil), DefaultSubscribeACL...)
	}
}

// Validate reports every invalid value, naming its key (auth.mode, ...).
// Call SetDefaults first.
func (o *Options) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if o.Mode != ModeRegistry && o.Mode != ModeOpen {
		bad("mode", "%q is not one of registry, open", o.Mode)
	}
	switch o.Backend {
	case BackendFile:
		if o.File == "" {
			bad("file", "required when auth.backend is file: the path of the YAML device registry")
		}
	case BackendRedis:
		if o.Redis.Addr == "" {
			bad("redis.addr", "required when auth.backend is redis")
		}
		if o.Redis.DB < 0 {
			bad("redis.db", "%d is negative", o.Redis.DB)
		}
		if o.Redis.Timeout < 0 {
			bad("redis.timeout", "%s is negative", o.Redis.Timeout)
		}
		if (o.Redis.TLS.CertFile == "") != (o.Redis.TLS.KeyFile == "") {
			bad("redis.tls", "cert_file and key_file go together")
		}
	default:
		bad("backend", "%q is not one of file, redis", o.Backend)
	}
	if o.StatusFlush < 0 {
		bad("status_flush", "%s is negative", o.StatusFlush)
	}
	if o.CacheSize < 0 {
		bad("cache_size", "%d is negative", o.CacheSize)
	}
	if _, err := NewACL(o.ACL.Publish, o.ACL.Subscribe); err != nil {
		errs = append(errs, fmt.Errorf("auth.acl.%w", err))
	}
	return errors.Join(errs...)
}
