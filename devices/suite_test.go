package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// backend opens registries for the shared behaviour suite. open returns a
// handle on the store named by shared, so two calls with the same shared
// value see the same devices (like two gateway processes).
type backend struct {
	name string
	open func(t *testing.T, mode, shared string) Registry
}

// runRegistrySuite runs the behaviour every backend must have.
func runRegistrySuite(t *testing.T, b backend) {
	ctx := context.Background()
	n := 0
	fresh := func(t *testing.T, mode string) (Registry, string) {
		n++
		shared := strings.ReplaceAll(t.Name(), "/", "_") + "-" + string(rune('a'+n%26))
		return b.open(t, mode, shared), shared
	}
	add := func(t *testing.T, reg Registry, id, password string) {
		t.Helper()
		if err := Add(ctx, reg, Device{ID: id}, Credentials{Password: password}); err != nil {
			t.Fatalf("Add(%s): %v", id, err)
		}
	}

	t.Run("authenticate", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		add(t, reg, "truck-1", "s3cret")
		if err := reg.Authenticate(ctx, "truck-1", "s3cret"); err != nil {
			t.Fatalf("right password: %v", err)
		}
		if err := reg.Authenticate(ctx, "truck-1", "s3cret"); err != nil {
			t.Fatalf("right password, cached: %v", err)
		}
		tests := []struct {
			id, password string
			reason       error
		}{
			{"truck-1", "guess-77", ErrBadCredentials},
			{"truck-1", "", ErrBadCredentials},
			{"truck-2", "s3cret", ErrUnknownDevice},
			{"bad/id", "s3cret", ErrInvalidID},
			{"", "s3cret", ErrInvalidID},
		}
		for _, tt := range tests {
			err := reg.Authenticate(ctx, tt.id, tt.password)
			if !errors.Is(err, ErrBadCredentials) || !errors.Is(err, tt.reason) {
				t.Errorf("Authenticate(%q, %q) = %v, want %v and %v", tt.id, tt.password, err, ErrBadCredentials, tt.reason)
			}
			if err != nil && tt.password != "" && strings.Contains(err.Error(), tt.password) {
				t.Errorf("error %q contains the password", err)
			}
		}
		if err := Add(ctx, reg, Device{ID: "truck-1"}, Credentials{Password: "x"}); !errors.Is(err, ErrExists) {
			t.Errorf("second Add = %v, want ErrExists", err)
		}
		if err := reg.Authenticate(ctx, "truck-1", "s3cret"); err != nil {
			t.Errorf("failed Add changed the password: %v", err)
		}
	})

	t.Run("get and list", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		created := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
		psk := bytes.Repeat([]byte{0xab}, 16)
		before := time.Now().Add(-time.Second)
		if err := Add(ctx, reg, Device{ID: "b-2", Meta: map[string]string{"fleet": "north", "model": "x1"}},
			Credentials{Password: "pw-b", PSK: psk}); err != nil {
			t.Fatal(err)
		}
		if err := Add(ctx, reg, Device{ID: "a-1", Created: created, Disabled: true}, Credentials{Password: "pw-a"}); err != nil {
			t.Fatal(err)
		}
		d, err := reg.Get(ctx, "b-2")
		if err != nil {
			t.Fatal(err)
		}
		if !d.Registered || d.Disabled || !d.HasPSK || d.Meta["fleet"] != "north" || d.Meta["model"] != "x1" ||
			d.Created.Before(before) || d.Online || !d.LastSeen.IsZero() {
			t.Errorf("Get(b-2) = %+v", d)
		}
		devs, err := reg.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != 2 || devs[0].ID != "a-1" || devs[1].ID != "b-2" {
			t.Fatalf("List = %+v, want a-1, b-2", devs)
		}
		if !devs[0].Created.Equal(created) || !devs[0].Disabled || devs[0].HasPSK {
			t.Errorf("List[0] = %+v", devs[0])
		}
		js, _ := json.Marshal(devs)
		for _, secret := range []string{"pw-a", "pw-b", "argon2", "abababab", "secret"} {
			if bytes.Contains(js, []byte(secret)) {
				t.Errorf("JSON of devices contains %q: %s", secret, js)
			}
		}
		if _, err := reg.Get(ctx, "nope"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("Get(nope) = %v, want ErrUnknownDevice", err)
		}
		if _, err := reg.Get(ctx, "-bad"); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Get(-bad) = %v, want ErrInvalidID", err)
		}
	})

	t.Run("set password", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		add(t, reg, "d", "old")
		if err := reg.Authenticate(ctx, "d", "old"); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetPassword(ctx, "d", "new"); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "d", "old"); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("old password after passwd = %v, want refused", err)
		}
		if err := reg.Authenticate(ctx, "d", "new"); err != nil {
			t.Errorf("new password: %v", err)
		}
		if err := reg.SetPassword(ctx, "ghost", "x"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("SetPassword(ghost) = %v, want ErrUnknownDevice", err)
		}
		if err := reg.SetPassword(ctx, "d", ""); err == nil {
			t.Error("empty password accepted")
		}
	})

	t.Run("remove", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		add(t, reg, "d", "pw")
		add(t, reg, "keep", "pw")
		if err := reg.Authenticate(ctx, "d", "pw"); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetStatus(ctx, "d", true, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := reg.Remove(ctx, "d"); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "d", "pw"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("removed device authenticated: %v", err)
		}
		if _, err := reg.Get(ctx, "d"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("Get(removed) = %v", err)
		}
		if err := reg.Remove(ctx, "d"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("second Remove = %v, want ErrUnknownDevice", err)
		}
		if devs, _ := reg.List(ctx); len(devs) != 1 || devs[0].ID != "keep" {
			t.Errorf("List after remove = %+v", devs)
		}
		add(t, reg, "d", "again")
		if d, _ := reg.Get(ctx, "d"); d.Online {
			t.Errorf("re-added device inherited status: %+v", d)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		if err := Add(ctx, reg, Device{ID: "d"}, Credentials{Password: "pw", PSK: make([]byte, 16)}); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "d", "pw"); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetDisabled(ctx, "d", true); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "d", "pw"); !errors.Is(err, ErrDisabled) || !errors.Is(err, ErrBadCredentials) {
			t.Errorf("disabled device: %v, want ErrDisabled", err)
		}
		if err := reg.Authenticate(ctx, "d", "wrong"); errors.Is(err, ErrDisabled) || !errors.Is(err, ErrBadCredentials) {
			t.Errorf("disabled device, wrong password: %v, want plain bad credentials", err)
		}
		if _, err := reg.PSK(ctx, "d"); !errors.Is(err, ErrDisabled) {
			t.Errorf("PSK of disabled device: %v", err)
		}
		if err := reg.SetDisabled(ctx, "d", false); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "d", "pw"); err != nil {
			t.Errorf("re-enabled device: %v", err)
		}
	})

	t.Run("psk", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		key := []byte("0123456789abcdef0123")
		if err := Add(ctx, reg, Device{ID: "coap-1"}, Credentials{PSK: key}); err != nil {
			t.Fatal(err)
		}
		add(t, reg, "mqtt-1", "pw")
		got, err := reg.PSK(ctx, "coap-1")
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("PSK = %x, %v; want %x", got, err, key)
		}
		if err := reg.Authenticate(ctx, "coap-1", ""); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("PSK-only device authenticated by password: %v", err)
		}
		if _, err := reg.PSK(ctx, "mqtt-1"); !errors.Is(err, ErrNoPSK) {
			t.Errorf("PSK(no key) = %v, want ErrNoPSK", err)
		}
		if _, err := reg.PSK(ctx, "ghost"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("PSK(ghost) = %v, want ErrUnknownDevice", err)
		}
		if err := reg.SetPSK(ctx, "mqtt-1", []byte("short")); err == nil {
			t.Error("5-byte PSK accepted")
		}
		if err := reg.SetPSK(ctx, "coap-1", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.PSK(ctx, "coap-1"); !errors.Is(err, ErrNoPSK) {
			t.Errorf("PSK after removal = %v, want ErrNoPSK", err)
		}
		if err := Add(ctx, reg, Device{ID: "none"}, Credentials{}); !errors.Is(err, ErrNoCredentials) {
			t.Errorf("Add without credentials = %v, want ErrNoCredentials", err)
		}
	})

	t.Run("put replace and skip", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		created := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
		key := bytes.Repeat([]byte{1}, 16)
		if err := Add(ctx, reg, Device{ID: "a", Created: created, Meta: map[string]string{"old": "1"}},
			Credentials{Password: "pw-a", PSK: key}); err != nil {
			t.Fatal(err)
		}
		entries := []Entry{
			{Device: Device{ID: "a", Meta: map[string]string{"new": "2"}, Disabled: true}},
			{Device: Device{ID: "b"}, Credentials: Credentials{Password: "pw-b"}},
		}
		if _, err := reg.Put(ctx, entries, false); !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("Put of an entry without credentials = %v, want ErrNoCredentials", err)
		}
		if _, err := reg.Get(ctx, "b"); !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("an invalid batch was partly stored: %v", err)
		}
		entries[0].Credentials.PasswordHash = mustBcrypt(t, "pw-a2")
		out, err := reg.Put(ctx, entries, false)
		if err != nil || len(out) != 2 || out[0] != Skipped || out[1] != Added {
			t.Fatalf("Put(skip) = %v, %v; want [skipped added]", out, err)
		}
		if err := reg.Authenticate(ctx, "a", "pw-a"); err != nil {
			t.Errorf("skipped device changed: %v", err)
		}
		entries[1].Credentials = Credentials{PSK: key}
		out, err = reg.Put(ctx, entries, true)
		if err != nil || out[0] != Updated || out[1] != Updated {
			t.Fatalf("Put(replace) = %v, %v; want [updated updated]", out, err)
		}
		a, _ := reg.Get(ctx, "a")
		if !a.Created.Equal(created) || !a.Disabled || a.Meta["new"] != "2" || a.Meta["old"] != "" || !a.HasPSK {
			t.Errorf("replaced device = %+v", a)
		}
		if err := reg.SetDisabled(ctx, "a", false); err != nil {
			t.Fatal(err)
		}
		if err := reg.Authenticate(ctx, "a", "pw-a2"); err != nil {
			t.Errorf("bcrypt password after replace: %v", err)
		}
		if err := reg.Authenticate(ctx, "b", "pw-b"); err != nil {
			t.Errorf("replace without a password dropped the old one: %v", err)
		}
		if _, err := reg.Put(ctx, []Entry{entries[1], entries[1]}, true); err == nil {
			t.Error("Put with a duplicate id accepted")
		}
	})

	t.Run("status", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		add(t, reg, "d", "pw")
		t0 := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)
		steps := []struct {
			online     bool
			at         time.Time
			wantOnline bool
			wantSeen   time.Time
		}{
			{true, t0, true, t0},
			{false, t0.Add(time.Minute), false, t0.Add(time.Minute)},
			{true, t0.Add(2 * time.Minute), true, t0.Add(2 * time.Minute)},
			{false, t0.Add(90 * time.Second), true, t0.Add(2 * time.Minute)}, // late disconnect: ignored
		}
		for i, s := range steps {
			if err := reg.SetStatus(ctx, "d", s.online, s.at); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			d, err := reg.Get(ctx, "d")
			if err != nil {
				t.Fatal(err)
			}
			if d.Online != s.wantOnline || !d.LastSeen.Equal(s.wantSeen) {
				t.Errorf("step %d: online %v last seen %v, want %v %v", i, d.Online, d.LastSeen, s.wantOnline, s.wantSeen)
			}
		}
		if err := reg.SetStatus(ctx, "ghost", true, t0); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("SetStatus(unregistered) in registry mode = %v, want ErrUnknownDevice", err)
		}
		devs, _ := reg.List(ctx)
		if len(devs) != 1 || !devs[0].Online {
			t.Errorf("List = %+v", devs)
		}
	})

	t.Run("open mode", func(t *testing.T) {
		reg, _ := fresh(t, ModeOpen)
		add(t, reg, "known", "pw")
		for _, id := range []string{"known", "anyone"} {
			if err := reg.Authenticate(ctx, id, "whatever"); err != nil {
				t.Errorf("open mode refused %s: %v", id, err)
			}
		}
		if err := reg.Authenticate(ctx, "#", ""); !errors.Is(err, ErrInvalidID) {
			t.Errorf("open mode, invalid id = %v, want ErrInvalidID", err)
		}
		at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := reg.SetStatus(ctx, "anyone", true, at); err != nil {
			t.Fatal(err)
		}
		d, err := reg.Get(ctx, "anyone")
		if err != nil || d.Registered || !d.Online || !d.LastSeen.Equal(at) {
			t.Errorf("Get(unregistered, online) = %+v, %v", d, err)
		}
		devs, _ := reg.List(ctx)
		if len(devs) != 2 || devs[0].ID != "anyone" || devs[1].ID != "known" || !devs[1].Registered {
			t.Errorf("List = %+v", devs)
		}
	})

	t.Run("two handles", func(t *testing.T) {
		a, shared := fresh(t, ModeRegistry)
		other := b.open(t, ModeRegistry, shared)
		add(t, a, "d", "pw1")
		if err := other.Authenticate(ctx, "d", "pw1"); err != nil {
			t.Fatalf("device added by another handle: %v", err)
		}
		if err := a.Authenticate(ctx, "d", "pw1"); err != nil {
			t.Fatal(err)
		}
		if err := other.SetPassword(ctx, "d", "pw2"); err != nil {
			t.Fatal(err)
		}
		// a has pw1 cached; the changed hash must still refuse it.
		if err := a.Authenticate(ctx, "d", "pw1"); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("password changed elsewhere, old one still accepted: %v", err)
		}
		if err := a.Authenticate(ctx, "d", "pw2"); err != nil {
			t.Errorf("password changed elsewhere: %v", err)
		}
		if err := other.Remove(ctx, "d"); err != nil {
			t.Fatal(err)
		}
		if err := a.Authenticate(ctx, "d", "pw2"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("removed elsewhere, still accepted: %v", err)
		}
	})

	t.Run("close", func(t *testing.T) {
		reg, _ := fresh(t, ModeRegistry)
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
		if err := reg.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		if err := reg.Authenticate(ctx, "d", "pw"); !errors.Is(err, ErrClosed) {
			t.Errorf("Authenticate after Close = %v, want ErrClosed", err)
		}
		if _, err := reg.List(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("List after Close = %v, want ErrClosed", err)
		}
	})
}

func mustBcrypt(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}
