package devices

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Authenticator is the part of a Registry the protocol adapters use. All
// methods are safe for concurrent use; ctx bounds each call.
type Authenticator interface {
	// Authenticate checks a device's password. It returns nil to accept.
	// Every credential failure (unknown device, wrong password, disabled,
	// invalid id) matches ErrBadCredentials; answer the device the same way
	// for all of them. Any other error means the registry could not decide
	// (store unreachable, ctx done): refuse with "server unavailable" so the
	// device retries. A miss costs one argon2id verification (about 40 ms,
	// at most GOMAXPROCS at once, waiting bounded by ctx); a repeated
	// success is answered from memory in microseconds. If the store is
	// unreachable, a device verified within auth.cache_ttl is still
	// accepted. In open mode any valid id is accepted without a lookup.
	Authenticate(ctx context.Context, id, password string) error

	// PSK returns the device's raw DTLS pre-shared key, for the CoAP DTLS
	// server's PSK callback (the PSK identity is the device id). Errors:
	// ErrInvalidID, ErrUnknownDevice, ErrDisabled, ErrNoPSK, or a store
	// error. The caller owns the returned slice.
	PSK(ctx context.Context, id string) ([]byte, error)

	// SetStatus records that device id connected (online) or disconnected
	// at time at. Call it on connect and disconnect, not per message. An
	// event older than the last one recorded is ignored, so a late
	// disconnect cannot hide a newer connect; adapters must not report
	// offline for a connection that a newer one of the same device took
	// over. In registry mode an unregistered id gets ErrUnknownDevice; in
	// open mode any valid id is tracked. The file backend keeps status in
	// memory and writes it every auth.status_flush; Redis writes at once.
	SetStatus(ctx context.Context, id string, online bool, at time.Time) error
}

// Registry stores devices and their credentials. Both backends (file and
// Redis) implement it with the same behaviour; all methods are safe for
// concurrent use, and changes made through one Registry (or another
// process, or another gateway sharing the Redis) are seen by every other
// within a second.
type Registry interface {
	Authenticator

	// Get returns one device; ErrUnknownDevice if it is not registered (in
	// open mode, a device only seen connecting is returned with Registered
	// false).
	Get(ctx context.Context, id string) (Device, error)

	// List returns every device, sorted by id. In open mode it also lists
	// unregistered devices the registry has status for (file backend) or
	// that are online (Redis backend).
	List(ctx context.Context) ([]Device, error)

	// Put stores many devices in as few writes as the backend allows (one
	// file rewrite; one Redis pipeline), hashing plain passwords in
	// parallel. Every entry is validated first and nothing is written if one
	// is invalid. A device that exists is Skipped, or with replace Updated:
	// its disabled flag and metadata are replaced, its password and PSK
	// only if the entry has one, and its created time and status are kept.
	// The outcomes are in entry order.
	Put(ctx context.Context, entries []Entry, replace bool) ([]Outcome, error)

	// Remove deletes a device and its status; ErrUnknownDevice if absent.
	Remove(ctx context.Context, id string) error

	// SetPassword replaces a device's password; ErrUnknownDevice if absent.
	SetPassword(ctx context.Context, id, password string) error

	// SetPSK replaces a device's DTLS pre-shared key; nil removes it.
	SetPSK(ctx context.Context, id string, psk []byte) error

	// SetDisabled disables or re-enables a device. A disabled device is
	// refused from its next attempt on; connections it already has are the
	// adapter's to close.
	SetDisabled(ctx context.Context, id string, disabled bool) error

	// Close flushes pending status and releases files or connections. It is
	// safe to call twice; other methods then return ErrClosed.
	Close() error
}

// Add registers one new device; ErrExists if the id is taken.
func Add(ctx context.Context, reg Registry, d Device, cred Credentials) error {
	out, err := reg.Put(ctx, []Entry{{Device: d, Credentials: cred}}, false)
	if err != nil {
		return err
	}
	if out[0] == Skipped {
		return fmt.Errorf("device %q: %w", d.ID, ErrExists)
	}
	return nil
}

// Open opens the registry that opts describe. It applies defaults and
// validates opts; with the file backend a missing file is an empty
// registry, created on the first write; with Redis the server must answer
// within auth.redis.timeout. A nil logger discards.
func Open(ctx context.Context, opts Options, logger *slog.Logger) (Registry, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "devices")
	track := opts.Mode == ModeOpen
	var st store
	var err error
	switch opts.Backend {
	case BackendRedis:
		st, err = openRedis(ctx, opts.Redis, track, logger)
	default:
		st, err = openFile(opts.File, opts.StatusFile, opts.StatusFlush, track, logger)
	}
	if err != nil {
		return nil, err
	}
	return newRegistry(st, opts, logger), nil
}

// record is what Authenticate and PSK need from a store.
type record struct {
	secret   string // password hash; empty if the device has none
	psk      []byte
	disabled bool
}

// storedEntry is an Entry ready for a store: password already hashed.
type storedEntry struct {
	id       string
	secret   string // empty: keep the existing one (replace) or none
	psk      []byte // nil: keep the existing one (replace) or none
	disabled bool
	created  time.Time
	meta     map[string]string
}

// change modifies fields of an existing device; nil fields are kept. A
// pointer to a nil psk removes the key.
type change struct {
	secret   *string
	psk      *[]byte
	disabled *bool
}

// store is a registry backend: it keeps records and status and nothing
// else; validation, hashing and caching live in registry.
type store interface {
	lookup(ctx context.Context, id string) (record, error)
	get(ctx context.Context, id string) (Device, error)
	list(ctx context.Context) ([]Device, error)
	put(ctx context.Context, entries []storedEntry, replace bool) ([]Outcome, error)
	remove(ctx context.Context, id string) error
	modify(ctx context.Context, id string, c change) error
	setStatus(ctx context.Context, id string, online bool, at time.Time) error
	close() error
}

// registry implements Registry over a store.
type registry struct {
	st       store
	open     bool
	log      *slog.Logger
	cache    *authCache // nil when auth.cache_ttl is negative
	verifier *verifier
	closed   atomic.Bool
	once     sync.Once
	closeErr error
}

var _ Registry = (*registry)(nil)

func newRegistry(st store, opts Options, logger *slog.Logger) *registry {
	r := &registry{st: st, open: opts.Mode == ModeOpen, log: logger, verifier: newVerifier()}
	if opts.CacheTTL > 0 && opts.CacheSize > 0 {
		r.cache = newAuthCache(opts.CacheTTL, opts.CacheSize)
	}
	return r
}

func authError(id string, reason error) error {
	return fmt.Errorf("device %s: %w: %w", quoteShort(id), ErrBadCredentials, reason)
}

var (
	errWrongPassword = errors.New("wrong password")
	errNoPassword    = errors.New("no password set")
)

func (r *registry) Authenticate(ctx context.Context, id, password string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if ValidID(id) != nil {
		return authError(id, ErrInvalidID)
	}
	if r.open {
		return nil
	}
	now := time.Now()
	var sum [32]byte
	if r.cache != nil {
		sum = r.cache.sum(id, password)
	}
	rec, err := r.st.lookup(ctx, id)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		r.dummyVerify(ctx, id, password)
		return authError(id, ErrUnknownDevice)
	case err != nil:
		if r.cache.hit(id, sum, "", now) {
			r.log.Debug("registry unreachable; accepted from cache", "device", id, "error", err)
			return nil
		}
		return fmt.Errorf("device %q: look up: %w", id, err)
	case rec.secret == "":
		r.dummyVerify(ctx, id, password)
		return authError(id, errNoPassword)
	}
	if !r.cache.hit(id, sum, rec.secret, now) {
		err := r.verifier.verify(ctx, id+"\x00"+string(sum[:])+rec.secret, rec.secret, password)
		switch {
		case errors.Is(err, ErrBadCredentials):
			return authError(id, errWrongPassword)
		case errors.Is(err, ErrUnsupportedHash):
			r.log.Warn("stored password hash cannot be verified; set a new password", "device", id, "error", err)
			return authError(id, err)
		case err != nil:
			return fmt.Errorf("device %q: verify: %w", id, err)
		}
		r.cache.put(id, sum, rec.secret, now)
	}
	if rec.disabled {
		return authError(id, ErrDisabled)
	}
	return nil
}

// dummyVerify spends the time of a real verification so that unknown ids
// and wrong passwords cannot be told apart by timing.
func (r *registry) dummyVerify(ctx context.Context, id, password string) {
	_ = r.verifier.verify(ctx, "dummy\x00"+id+"\x00"+password, dummyHash(), password)
}

func (r *registry) PSK(ctx context.Context, id string) ([]byte, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	if err := ValidID(id); err != nil {
		return nil, err
	}
	rec, err := r.st.lookup(ctx, id)
	switch {
	case err != nil:
		return nil, fmt.Errorf("device %q: %w", id, err)
	case rec.disabled:
		return nil, fmt.Errorf("device %q: %w", id, ErrDisabled)
	case rec.psk == nil:
		return nil, fmt.Errorf("device %q: %w", id, ErrNoPSK)
	}
	return append([]byte(nil), rec.psk...), nil
}

func (r *registry) SetStatus(ctx context.Context, id string, online bool, at time.Time) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if err := ValidID(id); err != nil {
		return err
	}
	if err := r.st.setStatus(ctx, id, online, at.UTC()); err != nil {
		return fmt.Errorf("device %q: set status: %w", id, err)
	}
	return nil
}

func (r *registry) Get(ctx context.Context, id string) (Device, error) {
	if r.closed.Load() {
		return Device{}, ErrClosed
	}
	if err := ValidID(id); err != nil {
		return Device{}, err
	}
	d, err := r.st.get(ctx, id)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", id, err)
	}
	return d, nil
}

func (r *registry) List(ctx context.Context) ([]Device, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	return r.st.list(ctx)
}

func (r *registry) Put(ctx context.Context, entries []Entry, replace bool) ([]Outcome, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if err := e.validate(); err != nil {
			return nil, err
		}
		if seen[e.Device.ID] {
			return nil, fmt.Errorf("device %q: given twice", e.Device.ID)
		}
		seen[e.Device.ID] = true
	}
	stored, err := hashEntries(ctx, entries)
	if err != nil {
		return nil, err
	}
	out, err := r.st.put(ctx, stored, replace)
	if err != nil {
		return nil, err
	}
	for i, o := range out {
		if o == Updated {
			r.cache.forget(entries[i].Device.ID)
		}
	}
	return out, nil
}

// hashEntries hashes plain passwords on GOMAXPROCS goroutines: an import
// of thousands of devices is bound by argon2id.
func hashEntries(ctx context.Context, entries []Entry) ([]storedEntry, error) {
	out := make([]storedEntry, len(entries))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, e := range entries {
		out[i] = storedEntry{
			id: e.Device.ID, secret: e.Credentials.PasswordHash, psk: e.Credentials.PSK,
			disabled: e.Device.Disabled, created: e.Device.Created.UTC(), meta: e.Device.Meta,
		}
		if e.Credentials.Password == "" {
			continue
		}
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			h, err := HashPassword(e.Credentials.Password)
			out[i].secret = h
			return err
		})
	}
	return out, g.Wait()
}

func (r *registry) Remove(ctx context.Context, id string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if err := ValidID(id); err != nil {
		return err
	}
	err := r.st.remove(ctx, id)
	r.cache.forget(id)
	if err != nil {
		return fmt.Errorf("device %q: %w", id, err)
	}
	return nil
}

func (r *registry) SetPassword(ctx context.Context, id, password string) error {
	if password == "" {
		return fmt.Errorf("device %q: empty password", id)
	}
	h, err := HashPassword(password)
	if err != nil {
		return err
	}
	return r.modify(ctx, id, change{secret: &h})
}

func (r *registry) SetPSK(ctx context.Context, id string, psk []byte) error {
	if psk != nil && (len(psk) < MinPSKLen || len(psk) > MaxPSKLen) {
		return fmt.Errorf("device %q: psk is %d bytes, want %d to %d", id, len(psk), MinPSKLen, MaxPSKLen)
	}
	return r.modify(ctx, id, change{psk: &psk})
}

func (r *registry) SetDisabled(ctx context.Context, id string, disabled bool) error {
	return r.modify(ctx, id, change{disabled: &disabled})
}

func (r *registry) modify(ctx context.Context, id string, c change) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if err := ValidID(id); err != nil {
		return err
	}
	err := r.st.modify(ctx, id, c)
	r.cache.forget(id)
	if err != nil {
		return fmt.Errorf("device %q: %w", id, err)
	}
	return nil
}

func (r *registry) Close() error {
	r.once.Do(func() {
		r.closed.Store(true)
		r.closeErr = r.st.close()
	})
	return r.closeErr
}
