package devices

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestArgon2Hash(t *testing.T) {
	withTunedParams(t)
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") || strings.Contains(h, "correct") {
		t.Fatalf("hash = %q, want PHC argon2id with the tuned parameters", h)
	}
	h2, _ := HashPassword("correct horse")
	if h == h2 {
		t.Error("two hashes of one password are equal: salt not random")
	}
	start := time.Now()
	if err := verifyPassword(h, "correct horse"); err != nil {
		t.Errorf("right password: %v", err)
	}
	cost := time.Since(start)
	t.Logf("one argon2id verification: %v", cost)
	if cost < 5*time.Millisecond {
		t.Errorf("verification took %v: too cheap to slow down guessing", cost)
	}
	if err := verifyPassword(h, "correct horsE"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong password: %v", err)
	}
	if err := CheckHash(h); err != nil {
		t.Errorf("CheckHash(own hash) = %v", err)
	}
}

func TestBcryptHash(t *testing.T) {
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		h := mustBcrypt(t, "legacy-pw")
		h = prefix + h[4:]
		if err := CheckHash(h); err != nil {
			t.Errorf("CheckHash(%s...) = %v", prefix, err)
		}
		if err := verifyPassword(h, "legacy-pw"); err != nil {
			t.Errorf("%s right password: %v", prefix, err)
		}
		if err := verifyPassword(h, "legacy-pW"); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s wrong password: %v", prefix, err)
		}
	}
}

func TestCheckHashRejects(t *testing.T) {
	tests := []string{
		"",
		"hunter2",
		"$1$abc$def",
		"$7$101$salt$hash", // mosquitto PBKDF2: not supported
		"$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=4,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=256$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=+64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA$extra",
		"$2a$99$GrHSb0wNYExNFPlWGNC0e.TDhYOJJHYvSX5DlxP9CmNkhkg9IVFGa",
		"$2a$",
	}
	for _, h := range tests {
		err := CheckHash(h)
		if !errors.Is(err, ErrUnsupportedHash) {
			t.Errorf("CheckHash(%q) = %v, want ErrUnsupportedHash", h, err)
		}
		if h != "" && err != nil && strings.Contains(err.Error(), h) {
			t.Errorf("error repeats the hash: %v", err)
		}
	}
}

// TestTimingUnknownVsWrong checks that an unknown id costs about as much
// as a wrong password, so response time does not reveal which ids exist.
func TestTimingUnknownVsWrong(t *testing.T) {
	withTunedParams(t)
	ctx := context.Background()
	reg := openFileRegistry(t, ModeRegistry, filepath.Join(t.TempDir(), "devices.yaml"))
	if err := Add(ctx, reg, Device{ID: "known"}, Credentials{Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	reg.Authenticate(ctx, "ghost", "warm-up") // makes the dummy hash
	median := func(id, password string) time.Duration {
		var d []time.Duration
		for range 5 {
			start := time.Now()
			if err := reg.Authenticate(ctx, id, password); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("Authenticate(%s) = %v", id, err)
			}
			d = append(d, time.Since(start))
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	wrong := median("known", "guess")
	unknown := median("ghost", "guess")
	t.Logf("median wrong password %v, unknown device %v", wrong, unknown)
	// A short cut would be a thousand times faster; the slack is for load.
	if unknown < wrong/3 || unknown > wrong*3 {
		t.Errorf("unknown device took %v, wrong password %v: timing tells them apart", unknown, wrong)
	}

	// A repeated success is answered from the cache.
	if err := reg.Authenticate(ctx, "known", "pw"); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	start := time.Now()
	for range n {
		if err := reg.Authenticate(ctx, "known", "pw"); err != nil {
			t.Fatal(err)
		}
	}
	per := time.Since(start) / n
	t.Logf("cached authentication: %v", per)
	if per > time.Millisecond {
		t.Errorf("cached authentication took %v, want microseconds", per)
	}
}

func BenchmarkAuthenticateCached(b *testing.B) {
	ctx := context.Background()
	reg, err := Open(ctx, Options{File: filepath.Join(b.TempDir(), "devices.yaml")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	if err := Add(ctx, reg, Device{ID: "d"}, Credentials{Password: "pw"}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := reg.Authenticate(ctx, "d", "pw"); err != nil {
			b.Fatal(err)
		}
	}
}
