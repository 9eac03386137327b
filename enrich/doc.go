// Package enrich adds reference data to records in the egress pipeline:
// for each record, the device's fields (fleet, model, route, ...) and the
// rows those fields name in second-level tables (the route's name and
// length, the driver's name) become gateway.Record.Ref, which the envelope
// carries to Kafka as "ref". The data lives in Redis (standalone, Sentinel
// or Cluster) behind a bounded local cache, or in a YAML or CSV file.
//
// # The ref
//
// A device's ref is its hash, field by field, as strings. Each configured
// lookup {field, key, as} takes the value of field, reads the hash at key
// (the {placeholder} replaced by that value) and puts it, as a nested map,
// under ref[as]; as defaults to field, so "route": "a1-bremen" becomes
// "route": {"name": ..., "km": ...}. A lookup whose id is not found leaves
// the field as it was. A device that is not known gets Ref nil and
// RefStale false. Ref maps are shared between records and batches and must
// not be modified.
//
// # Redis backend
//
// Device hashes live at enrich.key (default iotgw:device:{device}), lookup
// rows at each lookup's key (default iotgw:FIELD:{FIELD}). Enrich keeps
// these invariants:
//
//   - Ingest and delivery never wait on Redis longer than enrich.timeout
//     (default 50ms) per batch. A warm batch makes no round trip; a cold one
//     makes at most two pipelines, whatever its size: HGETALL of every
//     distinct device not fresh in the cache, then HGETALL of every lookup
//     row they name that is not fresh.
//   - When Redis fails or times out, Enrich marks it down and stops asking;
//     a background probe pings it with exponential backoff
//     (enrich.redis.min_backoff to max_backoff) and lets Enrich use it again
//     when it answers. Meanwhile records are enriched from the cache.
//   - Cached data past its TTL (enrich.cache.ttl, default 5m) is asked for
//     again; if Redis cannot answer it is still used and the record gets
//     RefStale = true. Data with nothing cached leaves the record unenriched.
//     Enrich returns an error only after Close.
//   - "No such key" is cached too, for enrich.cache.negative_ttl (default
//     30s), so unknown devices do not cost a round trip per batch.
//   - The cache holds at most enrich.cache.max_entries hashes (devices,
//     lookup rows and known absences together) and evicts the least
//     recently used. Expired entries stay until evicted: they are the
//     fallback while Redis is away.
//   - Changes reach the cache before the TTL when invalidation is on:
//     keyspace notifications for the device and lookup key patterns
//     (enabled with CONFIG SET notify-keyspace-events Kghx, keeping other
//     flags; if CONFIG is refused the gateway logs that and relies on the
//     channel and the TTL) and the channel enrich.invalidate.channel
//     (default iotgw:ref-changed), whose payload is the changed keys
//     separated by white space, or "*" for everything. Invalidation marks
//     entries expired rather than dropping them, so a change followed by an
//     outage still has a fallback. Whenever the subscription is
//     (re)established every entry is marked expired, because changes made
//     while it was down were missed. With Redis Cluster keyspace
//     notifications are node-local and only one node is subscribed: use the
//     channel there.
//   - The cache is written to enrich.snapshot.dir/refcache.json every
//     enrich.snapshot.interval when it changed, and on Close: JSON
//     {"version":1,"written_at":...,"entries":{KEY:{FIELD:VALUE}}}, written
//     to a temporary file, fsynced and renamed over the old one. New loads
//     it with every entry expired, so after a restart with Redis down
//     records are enriched from it, marked stale; a missing or unreadable
//     snapshot only costs a log line.
//
// New never fails because Redis is unreachable: it warns, enriches from the
// snapshot, and connects in the background.
//
// # File backend and formats
//
// Backend "file" reads enrich.file once at start (the built-in example
// fleet when empty) and enriches from memory; nothing is ever stale. Load
// (`iotgw ref load FILE`) imports the same files into Redis: each hash is
// replaced with DEL and HSET in one MULTI/EXEC, then "*" is published on
// the invalidation channel.
//
// YAML (.yaml, .yml): a mapping of tables, each a mapping of id to a
// mapping of field to scalar. "devices" is the device table; every other
// table is read by the lookup whose table option names it (default the
// field plus "s"). Scalars keep their text as written, anchors and merge
// keys work, nested values are an error:
//
//	devices:
//	  truck-0001: {model: Actros 1845, fleet: port, route: a1-bremen}
//	routes:
//	  a1-bremen: {name: Altenwerder - Bremen-Hemelingen, km: "118"}
//	fleets:
//	  port: {name: Port Shuttle}
//
// CSV (.csv): a header row naming the columns, then one row per device;
// the column "device" is the id and every other column a field. Empty
// cells are absent fields, lines starting with # are comments, a UTF-8
// byte order mark is skipped. A lookup's table is the file TABLE.csv in the
// same directory (routes.csv) in the same format, its first column being
// the id; a missing table file is logged and its lookups find nothing:
//
//	device,model,fleet,route
//	truck-0001,Actros 1845,port,a1-bremen
//
// examples/refdata holds the example fleet in both formats.
//
// # Configuration
//
//	enrich:
//	  backend: redis                # none | file | redis
//	  file: ""                      # backend file: .yaml/.yml/.csv
//	  redis: {addr: 127.0.0.1:6379} # or addrs + master_name (Sentinel), cluster,
//	                                # username, password, db, tls: {ca_file, cert_file,
//	                                # key_file, server_name, insecure_skip_verify},
//	                                # min_backoff: 250ms, max_backoff: 10s
//	  key: "iotgw:device:{device}"
//	  lookups:
//	    - {field: route, key: "iotgw:route:{route}", as: route, table: routes}
//	  cache: {max_entries: 100000, ttl: 5m, negative_ttl: 30s}
//	  timeout: 50ms
//	  snapshot: {dir: "", interval: 1m}
//	  invalidate: {keyspace: true, channel: iotgw:ref-changed}
package enrich
