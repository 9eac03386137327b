package enrich

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Backend names accepted by Options.Backend.
const (
	BackendNone  = "none"
	BackendFile  = "file"
	BackendRedis = "redis"
)

// Defaults applied by DefaultOptions and SetDefaults.
const (
	DefaultKey            = "iotgw:device:{device}"
	DefaultChannel        = "iotgw:ref-changed"
	DefaultMaxEntries     = 100000
	DefaultTTL            = 5 * time.Minute
	DefaultNegativeTTL    = 30 * time.Second
	DefaultTimeout        = 50 * time.Millisecond
	DefaultSnapshotPeriod = time.Minute
	DefaultRedisAddr      = "127.0.0.1:6379"
	DefaultMinBackoff     = 250 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
)

// Options configures enrichment. It is the `enrich:` section of the gateway
// config. Start from DefaultOptions and decode YAML over it: Invalidate's
// zero values mean "off", so its defaults (keyspace on, channel
// iotgw:ref-changed) only hold when the struct came from DefaultOptions.
type Options struct {
	// Backend is where reference data comes from: "none" (records pass
	// through unenriched), "file" (a YAML or CSV file read at start) or
	// "redis" (hashes in Redis, cached locally). Default "none".
	Backend string `yaml:"backend"`

	// File is the reference data file for backend "file": .yaml/.yml or
	// .csv (see the package doc for both formats). Empty means the built-in
	// example fleet that `iotgw dev` uses.
	File string `yaml:"file"`

	// Redis says how to reach Redis for backend "redis" and for Load.
	Redis RedisOptions `yaml:"redis"`

	// Key is the Redis key of a device's hash; {device} is replaced by the
	// device id. Default "iotgw:device:{device}".
	Key string `yaml:"key"`

	// Lookups are second-level lookups: for each, the value of a device
	// field names another hash whose fields are placed under ref[as].
	Lookups []Lookup `yaml:"lookups"`

	// Cache bounds the local cache of Redis hashes.
	Cache CacheOptions `yaml:"cache"`

	// Timeout bounds the Redis work of one Enrich call (all its round
	// trips together); past it the batch is enriched from the cache and
	// marked stale. Default 50ms.
	Timeout time.Duration `yaml:"timeout"`

	// Snapshot configures the on-disk copy of the cache that lets a
	// restarted gateway enrich while Redis is down.
	Snapshot SnapshotOptions `yaml:"snapshot"`

	// Invalidate says how the cache learns that reference data changed
	// before its TTL runs out.
	Invalidate InvalidateOptions `yaml:"invalidate"`
}

// Lookup is one second-level lookup.
type Lookup struct {
	// Field is the device field whose value is the id to look up, e.g.
	// "route".
	Field string `yaml:"field"`

	// Key is the Redis key of the looked-up hash with one {placeholder}
	// replaced by the field's value. Default "iotgw:FIELD:{FIELD}".
	Key string `yaml:"key"`

	// As is the name the looked-up hash gets in the ref. Default Field, so
	// the id string is replaced by the nested map (an id that is not found
	// stays a string).
	As string `yaml:"as"`

	// Table is the name of this lookup's table in a reference data file:
	// the top-level YAML key, or the CSV file TABLE.csv beside the devices
	// file. Default Field+"s" ("route" reads table "routes").
	Table string `yaml:"table"`
}

// CacheOptions bounds the local cache.
type CacheOptions struct {
	// MaxEntries is the most Redis hashes (devices, lookups and known
	// absences) kept; the least recently used go first. Default 100000.
	MaxEntries int `yaml:"max_entries"`

	// TTL is how long a cached hash is used before Enrich asks Redis again.
	// Past it, when Redis cannot answer, it is still used and marked stale.
	// Default 5m.
	TTL time.Duration `yaml:"ttl"`

	// NegativeTTL is how long "no such device" (or lookup id) is remembered,
	// so unknown devices do not cost a round trip per batch. Default 30s.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
}

// SnapshotOptions configures the on-disk snapshot of the cache.
type SnapshotOptions struct {
	// Dir is the directory of the snapshot file (refcache.json). Empty
	// disables snapshots; the gateway sets it to its buffer dir + "/enrich"
	// when the config leaves it empty.
	Dir string `yaml:"dir"`

	// Interval is how often the snapshot is rewritten when the cache
	// changed; it is also written on Close. Default 1m.
	Interval time.Duration `yaml:"interval"`
}

// InvalidateOptions configures change notification from Redis.
type InvalidateOptions struct {
	// Keyspace subscribes to Redis keyspace notifications for the device
	// and lookup keys, enabling them with CONFIG SET notify-keyspace-events
	// when needed. If CONFIG is refused the gateway logs it and relies on
	// the channel and the TTL. Default true (see DefaultOptions).
	Keyspace bool `yaml:"keyspace"`

	// Channel is a pub/sub channel whose messages invalidate cache entries:
	// the payload is Redis keys separated by white space, or "*" (or empty)
	// for everything. Load publishes "*" here. Empty disables it. Default
	// "iotgw:ref-changed" (see DefaultOptions).
	Channel string `yaml:"channel"`
}

// RedisOptions says how to reach Redis: standalone (one address), Cluster
// (several addresses, or Cluster: true) or Sentinel (MasterName set; the
// addresses are sentinels).
type RedisOptions struct {
	// Addr is one address, host:port. It is put in front of Addrs, so
	// either may be used. Default 127.0.0.1:6379 when both are empty.
	Addr string `yaml:"addr"`

	// Addrs are several addresses: Cluster seed nodes or Sentinels.
	Addrs []string `yaml:"addrs"`

	// MasterName is the Sentinel master name; setting it selects Sentinel.
	MasterName string `yaml:"master_name"`

	// Cluster selects Redis Cluster with a single address (a configuration
	// endpoint). Two or more addresses without MasterName always do.
	Cluster bool `yaml:"cluster"`

	// Username and Password authenticate (ACL user, or just a password).
	Username string `yaml:"username"`
	Password string `yaml:"password"`

	// DB is the database number (standalone and Sentinel only).
	DB int `yaml:"db"`

	// TLS configures TLS to Redis.
	TLS TLSOptions `yaml:"tls"`

	// MinBackoff is how long Enrich stops asking Redis after a failure
	// before a background probe tries again; each failed probe doubles it
	// up to MaxBackoff. Defaults 250ms and 10s.
	MinBackoff time.Duration `yaml:"min_backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// TLSOptions configures TLS to Redis. TLS is on when Enabled is true or any
// other field is set.
type TLSOptions struct {
	// Enabled turns TLS on with the system's root CAs.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of CAs to trust instead of the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key, for Redis
	// servers that require client certificates (tls-auth-clients yes).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the host name checked in the server certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

func (t TLSOptions) on() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" ||
		t.ServerName != "" || t.InsecureSkipVerify
}

// DefaultOptions returns the defaults: backend none, key
// iotgw:device:{device}, cache 100000 entries / 5m / 30s negative, timeout
// 50ms, snapshot every 1m, keyspace notifications on, channel
// iotgw:ref-changed.
func DefaultOptions() Options {
	o := Options{Invalidate: InvalidateOptions{Keyspace: true, Channel: DefaultChannel}}
	o.SetDefaults()
	return o
}

// DevOptions is what `iotgw dev` uses: backend "file" with the built-in
// example fleet (examples/refdata/fleet.yaml, device ids as the simulator's
// truck-0001 and sensor-0001) and its four lookups: fleet, route, driver,
// depot.
func DevOptions() Options {
	o := DefaultOptions()
	o.Backend = BackendFile
	o.Lookups = []Lookup{{Field: "fleet"}, {Field: "route"}, {Field: "driver"}, {Field: "depot"}}
	o.SetDefaults()
	return o
}

// SetDefaults fills zero fields with their defaults. It leaves Invalidate
// alone, because there false and "" mean "off"; DefaultOptions sets them.
func (o *Options) SetDefaults() {
	if o.Backend == "" {
		o.Backend = BackendNone
	}
	if o.Key == "" {
		o.Key = DefaultKey
	}
	for i := range o.Lookups {
		l := &o.Lookups[i]
		if l.Key == "" && l.Field != "" {
			l.Key = "iotgw:" + l.Field + ":{" + l.Field + "}"
		}
		if l.As == "" {
			l.As = l.Field
		}
		if l.Table == "" && l.Field != "" {
			l.Table = l.Field + "s"
		}
	}
	if o.Cache.MaxEntries == 0 {
		o.Cache.MaxEntries = DefaultMaxEntries
	}
	if o.Cache.TTL == 0 {
		o.Cache.TTL = DefaultTTL
	}
	if o.Cache.NegativeTTL == 0 {
		o.Cache.NegativeTTL = DefaultNegativeTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Snapshot.Interval == 0 {
		o.Snapshot.Interval = DefaultSnapshotPeriod
	}
	if o.Redis.Addr == "" && len(o.Redis.Addrs) == 0 {
		o.Redis.Addr = DefaultRedisAddr
	}
	if o.Redis.MinBackoff == 0 {
		o.Redis.MinBackoff = DefaultMinBackoff
	}
	if o.Redis.MaxBackoff == 0 {
		o.Redis.MaxBackoff = DefaultMaxBackoff
	}
}

// Validate reports every invalid value, each naming its key with the
// enrich. prefix. It expects SetDefaults (or DefaultOptions) to have run.
func (o *Options) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &optionError{key: "enrich." + key, msg: fmt.Sprintf(format, args...)})
	}

	switch o.Backend {
	case BackendNone, BackendFile, BackendRedis:
	default:
		bad("backend", "unknown backend %q: want none, file or redis", o.Backend)
	}
	if o.File != "" {
		if _, err := fileFormat(o.File); err != nil {
			bad("file", "%v", err)
		}
	}
	if name, err := parseTemplate(o.Key); err != nil {
		bad("key", "%v", err)
	} else if name != "device" {
		bad("key", "placeholder must be {device}, not {%s}", name)
	}

	seenAs := map[string]int{}
	for i, l := range o.Lookups {
		p := "lookups[" + strconv.Itoa(i) + "]."
		switch {
		case l.Field == "":
			bad(p+"field", "required: the device field that holds the id to look up")
		case strings.ContainsAny(l.Field, "{}"):
			bad(p+"field", "%q must not contain braces", l.Field)
		}
		if _, err := parseTemplate(l.Key); err != nil {
			bad(p+"key", "%v", err)
		}
		if l.As == "" {
			bad(p+"as", "must not be empty")
		} else if j, dup := seenAs[l.As]; dup {
			bad(p+"as", "%q is already used by enrich.lookups[%d]", l.As, j)
		} else {
			seenAs[l.As] = i
		}
		if l.Table == "" {
			bad(p+"table", "must not be empty")
		} else if l.Table == "devices" {
			bad(p+"table", `"devices" is the device table; pick another name`)
		}
	}

	if o.Cache.MaxEntries <= 0 {
		bad("cache.max_entries", "must be positive")
	}
	if o.Cache.TTL <= 0 {
		bad("cache.ttl", "must be positive")
	}
	if o.Cache.NegativeTTL <= 0 {
		bad("cache.negative_ttl", "must be positive")
	}
	if o.Timeout <= 0 {
		bad("timeout", "must be positive")
	}
	if o.Snapshot.Interval <= 0 {
		bad("snapshot.interval", "must be positive")
	}
	if strings.ContainsAny(o.Invalidate.Channel, " \t\r\n") {
		bad("invalidate.channel", "%q must not contain white space", o.Invalidate.Channel)
	}

	r := o.Redis
	addrs := r.addrs()
	if len(addrs) == 0 {
		bad("redis.addr", "required")
	}
	for _, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			bad("redis.addr", "%q is not host:port", a)
		}
	}
	if r.DB < 0 {
		bad("redis.db", "must not be negative")
	}
	if r.DB != 0 && r.MasterName == "" && (r.Cluster || len(addrs) > 1) {
		bad("redis.db", "must be 0 with Redis Cluster")
	}
	if r.MinBackoff <= 0 {
		bad("redis.min_backoff", "must be positive")
	}
	if r.MaxBackoff < r.MinBackoff {
		bad("redis.max_backoff", "must be at least enrich.redis.min_backoff (%s)", r.MinBackoff)
	}
	if (r.TLS.CertFile == "") != (r.TLS.KeyFile == "") {
		bad("redis.tls.cert_file", "cert_file and key_file must be set together")
	}
	return errors.Join(errs...)
}

// addrs is Addr followed by Addrs, without duplicates.
func (r RedisOptions) addrs() []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range append([]string{r.Addr}, r.Addrs...) {
		a = strings.TrimSpace(a)
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// fileFormat returns "yaml" or "csv" from the file's extension.
func fileFormat(path string) (string, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return "yaml", nil
	case ".csv":
		return "csv", nil
	}
	return "", fmt.Errorf("%q: unknown format, want a .yaml, .yml or .csv file", path)
}

// keyTemplate is a key pattern with exactly one {placeholder}, split around
// it so building a key is two concatenations.
type keyTemplate struct {
	prefix, suffix string
}

// parseTemplate checks that s has exactly one non-empty {name} and returns
// the name.
func parseTemplate(s string) (string, error) {
	open := strings.IndexByte(s, '{')
	end := strings.IndexByte(s, '}')
	if open < 0 || end < open+2 {
		return "", fmt.Errorf("%q needs one {placeholder} for the id", s)
	}
	if strings.ContainsAny(s[open+1:end], "{") || strings.ContainsAny(s[end+1:], "{}") || strings.ContainsAny(s[:open], "}") {
		return "", fmt.Errorf("%q must have exactly one {placeholder}", s)
	}
	return s[open+1 : end], nil
}

// mustTemplate builds a keyTemplate from a validated pattern.
func mustTemplate(s string) keyTemplate {
	open := strings.IndexByte(s, '{')
	end := strings.IndexByte(s, '}')
	return keyTemplate{prefix: s[:open], suffix: s[end+1:]}
}

func (t keyTemplate) key(id string) string { return t.prefix + id + t.suffix }

// appendKey appends the key for id to buf, so hot paths can look a key up
// without allocating (m[string(buf)] does not copy).
func (t keyTemplate) appendKey(buf []byte, id string) []byte {
	buf = append(buf, t.prefix...)
	buf = append(buf, id...)
	return append(buf, t.suffix...)
}

// pattern is the PSUBSCRIBE/KEYS glob matching every key of the template.
func (t keyTemplate) pattern() string {
	return globEscape(t.prefix) + "*" + globEscape(t.suffix)
}

func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
