package devices

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// authCache remembers successful verifications so that a device that
// reconnects, or a CoAP device that sends its credential with every
// request, costs a map lookup instead of an argon2id run.
//
// It holds one entry per device: an HMAC of the password under a random
// per-process key (so the cache holds nothing that can be looked up in a
// precomputed table), the stored hash it was verified against, and an
// expiry. A hit requires the stored hash to be unchanged, so a password
// change or removal made by any process or gateway instance takes effect
// on the next attempt; forget drops an entry at once in this process.
//
// Size is bounded: when full, expired entries are swept, and if none
// expired an arbitrary entry is evicted (its device pays one slow verify).
type authCache struct {
	ttl time.Duration
	max int
	key [32]byte

	mu sync.Mutex
	m  map[string]cacheEntry
}

type cacheEntry struct {
	sum    [32]byte
	secret string
	exp    time.Time
}

func newAuthCache(ttl time.Duration, max int) *authCache {
	c := &authCache{ttl: ttl, max: max, m: make(map[string]cacheEntry)}
	rand.Read(c.key[:]) // never fails since Go 1.24
	return c
}

func (c *authCache) sum(id, password string) [32]byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// hit reports whether id was verified with the password summed as sum
// against stored hash secret before its entry expired. An empty secret
// means the store could not be asked, and any unexpired entry counts.
func (c *authCache) hit(id string, sum [32]byte, secret string, now time.Time) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	return ok && now.Before(e.exp) && (secret == "" || e.secret == secret) &&
		subtle.ConstantTimeCompare(e.sum[:], sum[:]) == 1
}

func (c *authCache) put(id string, sum [32]byte, secret string, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; !ok && len(c.m) >= c.max {
		for k, e := range c.m {
			if !now.Before(e.exp) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[id] = cacheEntry{sum: sum, secret: secret, exp: now.Add(c.ttl)}
}

func (c *authCache) forget(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func (c *authCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// verifier runs the slow hash verifications: at most GOMAXPROCS at once,
// so that a reconnect storm costs bounded CPU and memory (19 MiB each) and
// the rest wait, bounded by their context; concurrent attempts with the same
// id and password share one run.
type verifier struct {
	sem   chan struct{}
	group singleflight.Group
}

func newVerifier() *verifier {
	return &verifier{sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
}

// verify checks password against hash h; key identifies identical
// attempts. It returns nil, ErrBadCredentials, an ErrUnsupportedHash error,
// or ctx.Err() when ctx ends while waiting for a slot.
func (v *verifier) verify(ctx context.Context, key, h, password string) error {
	for {
		ch := v.group.DoChan(key, func() (any, error) {
			select {
			case v.sem <- struct{}{}:
			case <-ctx.Done():
				return nil, errAbandoned
			}
			defer func() { <-v.sem }()
			return nil, verifyPassword(h, password)
		})
		select {
		case r := <-ch:
			if r.Err == errAbandoned && ctx.Err() == nil {
				// The caller that started this run gave up before it got a
				// slot; start one of our own.
				continue
			}
			if r.Err == errAbandoned {
				return ctx.Err()
			}
			return r.Err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// errAbandoned ends a shared verification whose starter's context ended
// while it waited for a slot.
var errAbandoned = errors.New("verification abandoned")
