package devices

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openFileRegistry opens a file registry at path with change checks on
// every lookup, so tests need not wait a second.
func openFileRegistry(t *testing.T, mode, path string) Registry {
	t.Helper()
	reg, err := Open(context.Background(), Options{Mode: mode, File: path, StatusFlush: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := reg.(*registry).st.(*fileStore)
	fs.every, fs.status.every = 0, 0
	t.Cleanup(func() { reg.Close() })
	return reg
}

func fileBackend(t *testing.T) backend {
	root := t.TempDir()
	return backend{name: "file", open: func(t *testing.T, mode, shared string) Registry {
		return openFileRegistry(t, mode, filepath.Join(root, shared, "devices.yaml"))
	}}
}

func TestFileRegistry(t *testing.T) {
	runRegistrySuite(t, fileBackend(t))
}

func TestFileRegistryFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "reg", "devices.yaml")
	reg := openFileRegistry(t, ModeRegistry, path)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("opening created the file: %v", err)
	}
	if err := Add(ctx, reg, Device{ID: "truck-1", Meta: map[string]string{"fleet": "north"}},
		Credentials{Password: "hunter2", PSK: bytes.Repeat([]byte{0xaa}, 16)}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("registry mode = %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	for _, want := range []string{"version: 1", "truck-1:", "secret: $argon2id$v=19$", "psk: " + strings.Repeat("aa", 16), "fleet: north"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("registry file lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(string(data), "hunter2") {
		t.Errorf("registry file contains the password:\n%s", data)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".devices.yaml.tmp-*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
}

func TestFileRegistryReload(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "devices.yaml")
	gw := openFileRegistry(t, ModeRegistry, path)
	gw.(*registry).st.(*fileStore).every = 50 * time.Millisecond
	cli := openFileRegistry(t, ModeRegistry, path)

	if err := gw.Authenticate(ctx, "late", "pw"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("before add: %v", err)
	}
	if err := Add(ctx, cli, Device{ID: "late"}, Credentials{Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for gw.Authenticate(ctx, "late", "pw") != nil {
		if time.Now().After(deadline) {
			t.Fatal("device added by another process not seen within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A hand edit that breaks the file keeps the last good registry.
	if err := os.WriteFile(path, []byte("devices: [this is not\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	if err := gw.Authenticate(ctx, "late", "pw"); err != nil {
		t.Errorf("after a broken edit: %v, want the last good registry", err)
	}
	if err := cli.SetPassword(ctx, "late", "x"); err == nil {
		t.Error("a write over an unparsable registry succeeded; it must refuse to overwrite it")
	}
}

func TestFileRegistryStatus(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.yaml")
	statusPath := filepath.Join(dir, "devices.status.json")
	gw := openFileRegistry(t, ModeRegistry, path)
	for _, id := range []string{"a", "b"} {
		if err := Add(ctx, gw, Device{ID: id}, Credentials{Password: "pw"}); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	if err := gw.SetStatus(ctx, "a", true, at); err != nil {
		t.Fatal(err)
	}
	if err := gw.SetStatus(ctx, "b", false, at); err != nil {
		t.Fatal(err)
	}

	// Another process (iotgw devices list) sees the status once flushed.
	cli := openFileRegistry(t, ModeRegistry, path)
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, _ := cli.Get(ctx, "a")
		if d.Online && d.LastSeen.Equal(at) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status not flushed to %s within 5s: %+v", statusPath, d)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A restarted gateway clears inherited online flags when it first
	// reports status, and keeps last-seen.
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	gw2 := openFileRegistry(t, ModeRegistry, path)
	if err := gw2.SetStatus(ctx, "b", true, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	a, _ := gw2.Get(ctx, "a")
	b, _ := gw2.Get(ctx, "b")
	if a.Online || !a.LastSeen.Equal(at) || !b.Online {
		t.Errorf("after restart: a=%+v b=%+v", a, b)
	}
	if err := gw2.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(statusPath)
	if err != nil || !strings.Contains(string(data), `"b":{"online":true`) {
		t.Errorf("status file after Close: %s, %v", data, err)
	}
}

func TestFileRegistryWarnsWhenReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(path, []byte("version: 1\ndevices: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reg, err := Open(context.Background(), Options{File: path}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if !strings.Contains(logs.String(), "chmod 600") {
		t.Errorf("no warning for a world-readable registry; logs:\n%s", logs.String())
	}
}

const goodArgon = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$2hhgx7RfJv9OJoJ2K4NdFBoaRpJxn33TAz7UU1YDTYY"

func TestParseRegistry(t *testing.T) {
	tests := []struct {
		name, doc string
		devices   int
		err       string
	}{
		{"empty", "", 0, ""},
		{"comments only", "# nothing yet\n", 0, ""},
		{"no devices", "version: 1\n", 0, ""},
		{"one", "version: 1\ndevices:\n  t-1:\n    secret: " + goodArgon + "\n    created: 2024-01-01T00:00:00Z\n", 1, ""},
		{"psk only", "version: 1\ndevices:\n  t-1:\n    psk: 00112233445566778899aabbccddeeff\n", 1, ""},
		{"bcrypt", "version: 1\ndevices:\n  t-1:\n    secret: $2a$04$GrHSb0wNYExNFPlWGNC0e.TDhYOJJHYvSX5DlxP9CmNkhkg9IVFGa\n", 1, ""},
		{"future version", "version: 2\ndevices: {}\n", 0, "version 2"},
		{"unknown field", "version: 1\ndevices:\n  t-1:\n    password: plain\n", 0, "field password not found"},
		{"bad id", "version: 1\ndevices:\n  a/b:\n    psk: 00112233445566778899aabbccddeeff\n", 0, "invalid device id"},
		{"null entry", "version: 1\ndevices:\n  t-1:\n", 0, "empty entry"},
		{"plain secret", "version: 1\ndevices:\n  t-1:\n    secret: hunter2\n", 0, "unsupported password hash"},
		{"short psk", "version: 1\ndevices:\n  t-1:\n    psk: 0011\n", 0, "psk: 2 bytes"},
		{"bad meta", "version: 1\ndevices:\n  t-1:\n    psk: 00112233445566778899aabbccddeeff\n    meta: {\"a b\": x}\n", 0, "metadata key"},
		{"duplicate", "version: 1\ndevices:\n  t-1: {psk: 00112233445566778899aabbccddeeff}\n  t-1: {psk: 00112233445566778899aabbccddeeff}\n", 0, "already defined"},
		{"not yaml", "{{{", 0, "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, err := parseRegistry([]byte(tt.doc))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error shows the secret: %v", err)
				}
				return
			}
			if err != nil || len(devs) != tt.devices {
				t.Fatalf("got %d devices, %v; want %d", len(devs), err, tt.devices)
			}
		})
	}
}

func FuzzParseRegistry(f *testing.F) {
	f.Add([]byte("version: 1\ndevices:\n  t-1:\n    secret: " + goodArgon + "\n    psk: 00112233445566778899aabbccddeeff\n    meta: {fleet: north}\n"))
	f.Add([]byte("version: 1\ndevices:\n  t-1:\n"))
	f.Add([]byte("devices: !!binary AAAA\n"))
	f.Add([]byte("version: 1\ndevices:\n  t-1: {secret: \"$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		devs, err := parseRegistry(data)
		if err != nil {
			return
		}
		for id, e := range devs {
			if ValidID(id) != nil {
				t.Fatalf("accepted invalid id %q", id)
			}
			if e.Secret != "" && CheckHash(e.Secret) != nil {
				t.Fatalf("accepted bad secret for %q", id)
			}
		}
		// What was accepted must survive a write and a read.
		out, err := marshalRegistry(devs)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseRegistry(out)
		if err != nil || len(again) != len(devs) {
			t.Fatalf("round trip: %d devices, %v; want %d", len(again), err, len(devs))
		}
	})
}
