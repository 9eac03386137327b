package devices

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestAuthCache(t *testing.T) {
	now := time.Now()
	c := newAuthCache(time.Minute, 3)
	sum := c.sum("d", "pw")
	if c.sum("d", "pw") != sum || c.sum("d", "pw2") == sum || c.sum("d2", "pw") == sum {
		t.Fatal("sum does not depend on exactly id and password")
	}
	if newAuthCache(time.Minute, 3).sum("d", "pw") == sum {
		t.Error("sums equal across caches: the HMAC key is not random")
	}
	c.put("d", sum, "h1", now)
	tests := []struct {
		name   string
		id     string
		sum    [32]byte
		secret string
		at     time.Time
		hit    bool
	}{
		{"same", "d", sum, "h1", now, true},
		{"store down", "d", sum, "", now, true},
		{"other password", "d", c.sum("d", "x"), "h1", now, false},
		{"hash changed", "d", sum, "h2", now, false},
		{"expired", "d", sum, "h1", now.Add(time.Minute), false},
		{"other device", "e", sum, "h1", now, false},
	}
	for _, tt := range tests {
		if got := c.hit(tt.id, tt.sum, tt.secret, tt.at); got != tt.hit {
			t.Errorf("%s: hit = %v, want %v", tt.name, got, tt.hit)
		}
	}
	c.forget("d")
	if c.hit("d", sum, "h1", now) {
		t.Error("hit after forget")
	}

	// Bounded: expired entries go first, then arbitrary ones.
	for i, id := range []string{"a", "b", "c"} {
		c.put(id, sum, "h", now.Add(time.Duration(i-2)*time.Minute))
	}
	c.put("new", sum, "h", now)
	if c.len() != 2 || !c.hit("new", sum, "h", now) || !c.hit("c", sum, "h", now) {
		t.Errorf("after sweeping expired entries: %d entries", c.len())
	}
	for _, id := range []string{"x", "y", "z", "w"} {
		c.put(id, sum, "h", now)
	}
	if c.len() != 3 || !c.hit("w", sum, "h", now) {
		t.Errorf("cache grew to %d entries, limit 3", c.len())
	}

	var off *authCache // auth.cache_ttl < 0
	off.put("d", sum, "h", now)
	if off.hit("d", sum, "h", now) {
		t.Error("disabled cache hit")
	}
}

// downStore fails every lookup while down, like an unreachable Redis.
type downStore struct {
	store
	down bool
}

var errDown = errors.New("connection refused")

func (s *downStore) lookup(ctx context.Context, id string) (record, error) {
	if s.down {
		return record{}, errDown
	}
	return s.store.lookup(ctx, id)
}

func TestAuthenticateStoreDown(t *testing.T) {
	ctx := context.Background()
	reg := openFileRegistry(t, ModeRegistry, filepath.Join(t.TempDir(), "devices.yaml")).(*registry)
	ds := &downStore{store: reg.st}
	reg.st = ds
	for _, id := range []string{"seen", "unseen"} {
		if err := Add(ctx, reg, Device{ID: id}, Credentials{Password: "pw"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.Authenticate(ctx, "seen", "pw"); err != nil {
		t.Fatal(err)
	}
	ds.down = true
	if err := reg.Authenticate(ctx, "seen", "pw"); err != nil {
		t.Errorf("store down, device verified recently: %v, want accepted from cache", err)
	}
	err := reg.Authenticate(ctx, "seen", "other")
	if err == nil || errors.Is(err, ErrBadCredentials) || !errors.Is(err, errDown) {
		t.Errorf("store down, other password: %v, want the store error (not bad credentials)", err)
	}
	err = reg.Authenticate(ctx, "unseen", "pw")
	if err == nil || errors.Is(err, ErrBadCredentials) {
		t.Errorf("store down, device not cached: %v, want a store error", err)
	}
}

func TestAuthenticateContext(t *testing.T) {
	reg := openFileRegistry(t, ModeRegistry, filepath.Join(t.TempDir(), "devices.yaml")).(*registry)
	if err := Add(context.Background(), reg, Device{ID: "d"}, Credentials{Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	// Occupy every verification slot; a caller whose context ends while
	// waiting gets the context's error, not a credential failure.
	for range cap(reg.verifier.sem) {
		reg.verifier.sem <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := reg.Authenticate(ctx, "d", "pw")
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrBadCredentials) {
		t.Errorf("Authenticate with all slots busy = %v, want context.DeadlineExceeded", err)
	}
	for range cap(reg.verifier.sem) {
		<-reg.verifier.sem
	}
	if err := reg.Authenticate(context.Background(), "d", "pw"); err != nil {
		t.Errorf("after slots freed: %v", err)
	}
}
