// Package devices is device identity for iotgw: which devices exist, how
// they prove who they are, which topics each may use, and whether each is
// online. The protocol adapters call Authenticate, PSK, SetStatus, the ACL
// and ParseTopic; `iotgw devices` calls the rest.
//
// # Identity and topics
//
// A device id follows ValidID (1 to 128 of [A-Za-z0-9._:-], not starting
// with '.' or '-'), which keeps it safe as an MQTT topic level, Kafka key,
// Redis key and file name. Devices publish to devices/{device}/{stream}[/...]
// (ParseTopic) and receive commands on devices/{device}/commands[/...]. The
// ACL, configured as patterns with a {device} placeholder, lets a device
// publish only under its own tree and subscribe only to its own commands;
// a subscription is allowed only if every topic it could match is allowed.
//
// # Credentials
//
// Passwords are stored only as argon2id hashes in PHC string format
// ($argon2id$v=19$m=19456,t=2,p=1$salt$hash; about 40 ms and 19 MiB per
// verification on the reference machine). bcrypt hashes ($2a$, $2b$, $2y$)
// are accepted for fleets imported from other systems. Passwords and
// hashes are never logged, printed or returned: Device has no such field
// and Credentials redacts itself.
//
// A device may also have a DTLS pre-shared key for CoAP over DTLS-PSK. The
// DTLS server needs the raw key, so it is the one secret kept in clear
// (hex): the registry file is written with mode 0600 and a warning is
// logged if it is readable by others; in Redis, protect the server.
//
// Successful verifications are cached in memory (auth.cache_ttl, bounded
// by auth.cache_size) so that reconnects and per-request CoAP credentials
// cost microseconds. A cache hit still checks that the stored hash is the
// one verified, so a password change or removal by any process takes
// effect on the next attempt. An unknown id costs a dummy verification, so
// unknown ids and wrong passwords take the same time.
//
// # Backends
//
// The file backend keeps the registry in one YAML file (see
// examples/devices/devices.yaml), replaced atomically (temp file, fsync,
// rename, directory fsync) under an flock on <file>.lock, so concurrent
// `iotgw devices` runs do not lose each other's changes. A running gateway
// stats the file at most once per second on lookup and reloads it when it
// changed; a file that fails to parse is logged and the last good version
// kept. Online status and last-seen live in memory and are written to a
// JSON side file (auth.status_file) every auth.status_flush.
//
// The Redis backend (auth.backend: redis) is shared by several gateway
// instances: a hash {prefix}dev:{id} per device, a set {prefix}devices of
// ids and a set {prefix}online; every change is one Lua script, so it is
// atomic. See redis.go for the field layout.
//
// # Modes
//
// In registry mode (the default) only registered, enabled devices with
// the right password are accepted. In open mode (auth.mode: open, used by
// `iotgw dev`) Authenticate accepts any valid id with any password without
// looking at the registry; status is still tracked, for unregistered
// devices too.
//
// # Known limits
//
// After an unclean stop, devices may show online until they reconnect: the
// file backend clears inherited online flags when the gateway reports its
// first status, but a Redis shared by several gateways cannot tell whose
// connections were lost.
package devices
