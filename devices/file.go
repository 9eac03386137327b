package devices

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gopkg.in/yaml.v3"
)

// fileVersion is the registry file format version.
const fileVersion = 1

// reloadEvery is how often a lookup may stat the registry file for changes.
const reloadEvery = time.Second

// maxTracked bounds status entries for unregistered devices in open mode.
const maxTracked = 100_000

// fileHeader starts every registry file the gateway writes.
const fileHeader = `# iotgw device registry. Written by "iotgw devices"; may be edited by hand
# (a running gateway reloads it within a second). secret is an argon2id or
# bcrypt hash. psk is a DTLS pre-shared key in clear hex: keep this file 0600.
`

// fileDoc is the YAML registry file.
type fileDoc struct {
	Version int                   `yaml:"version"`
	Devices map[string]*fileEntry `yaml:"devices"`
}

type fileEntry struct {
	Secret   string            `yaml:"secret,omitempty"`
	PSK      string            `yaml:"psk,omitempty"`
	Created  time.Time         `yaml:"created"`
	Disabled bool              `yaml:"disabled,omitempty"`
	Meta     map[string]string `yaml:"meta,omitempty"`
}

// deviceStatus is one device's entry in the status file.
type deviceStatus struct {
	Online   bool      `json:"online"`
	LastSeen time.Time `json:"last_seen"`
}

// fileStore is the file backend: the registry is a YAML file, replaced
// atomically on every change and re-read when another process changed it.
type fileStore struct {
	path  string
	log   *slog.Logger
	track bool
	every time.Duration // min time between stats of the file; tests set 0

	lastCheck atomic.Int64 // unix nanos of the last stat
	writeMu   sync.Mutex   // serializes reloads and writes in this process

	mu    sync.RWMutex
	devs  map[string]*fileEntry // replaced whole, never changed in place
	ident fs.FileInfo           // what devs was read from; nil if no file

	status *statusFile
}

var _ store = (*fileStore)(nil)

func openFile(path, statusPath string, flush time.Duration, track bool, logger *slog.Logger) (*fileStore, error) {
	s := &fileStore{path: path, log: logger, track: track, every: reloadEvery}
	devs, fi, err := readRegistry(path)
	if err != nil {
		return nil, err
	}
	s.devs, s.ident = devs, fi
	s.lastCheck.Store(time.Now().UnixNano())
	s.warnMode(fi)
	s.status, err = openStatus(statusPath, flush, logger)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *fileStore) warnMode(fi fs.FileInfo) {
	if fi != nil && fi.Mode().Perm()&0o077 != 0 {
		s.log.Warn("device registry is readable by other users; it holds PSKs in clear: chmod 600 it",
			"file", s.path, "mode", fi.Mode().Perm().String())
	}
}

// readRegistry reads and parses the registry file. A missing file is an
// empty registry and a nil FileInfo.
func readRegistry(path string) (map[string]*fileEntry, fs.FileInfo, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]*fileEntry{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("device registry: %w", err)
	}
	defer f.Close()
	// Stat the open file so that the identity matches the bytes read even if
	// the file is replaced meanwhile.
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("device registry: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("device registry %s: %w", path, err)
	}
	devs, err := parseRegistry(data)
	if err != nil {
		return nil, nil, fmt.Errorf("device registry %s: %w", path, err)
	}
	return devs, fi, nil
}

// parseRegistry decodes and checks a registry file. Unknown keys are errors
// so that a misspelt field is not silently ignored.
func parseRegistry(data []byte) (map[string]*fileEntry, error) {
	var doc fileDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if doc.Version != fileVersion && !(doc.Version == 0 && len(doc.Devices) == 0) {
		return nil, fmt.Errorf("version %d: this iotgw reads version %d", doc.Version, fileVersion)
	}
	if doc.Devices == nil {
		doc.Devices = map[string]*fileEntry{}
	}
	for id, e := range doc.Devices {
		if err := ValidID(id); err != nil {
			return nil, err
		}
		if e == nil {
			return nil, fmt.Errorf("device %q: empty entry", id)
		}
		if e.Secret != "" {
			if err := CheckHash(e.Secret); err != nil {
				return nil, fmt.Errorf("device %q: secret: %w", id, err)
			}
		}
		if e.PSK != "" {
			if _, err := ParsePSK(e.PSK); err != nil {
				return nil, fmt.Errorf("device %q: %w", id, err)
			}
		}
		if err := validMeta(e.Meta); err != nil {
			return nil, fmt.Errorf("device %q: %w", id, err)
		}
	}
	return doc.Devices, nil
}

func marshalRegistry(devs map[string]*fileEntry) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(fileHeader)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(fileDoc{Version: fileVersion, Devices: devs}); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// snapshot returns the current devices, re-reading the file first if it
// may have changed: at most once per s.every, so a lookup normally costs
// an atomic load and a map read.
func (s *fileStore) snapshot() map[string]*fileEntry {
	now := time.Now().UnixNano()
	last := s.lastCheck.Load()
	if now-last >= int64(s.every) && s.lastCheck.CompareAndSwap(last, now) {
		s.reload()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.devs
}

func (s *fileStore) reload() {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	fi, err := os.Stat(s.path)
	s.mu.RLock()
	cur := s.ident
	s.mu.RUnlock()
	switch {
	case errors.Is(err, fs.ErrNotExist) && cur == nil:
		return
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		s.log.Error("cannot check device registry; keeping the loaded one", "file", s.path, "error", err)
		return
	case err == nil && sameFile(cur, fi):
		return
	}
	devs, fi, err := readRegistry(s.path)
	if err != nil {
		// Remember the broken file so the error is logged once per change.
		s.log.Error("device registry changed but cannot be read; keeping the last good one", "file", s.path, "error", err)
		fi, _ = os.Stat(s.path)
		devs = s.devs
	} else if fi == nil {
		s.log.Warn("device registry file was removed; no device is registered now", "file", s.path)
	} else {
		s.log.Info("device registry reloaded", "file", s.path, "devices", len(devs))
		s.warnMode(fi)
	}
	s.mu.Lock()
	s.devs, s.ident = devs, fi
	s.mu.Unlock()
}

func sameFile(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// mutate applies fn to a fresh copy of the registry read under an
// exclusive lock on path.lock (so concurrent `iotgw devices` commands
// cannot lose each other's changes) and writes the result back if fn
// reports a change. A file that cannot be parsed is never overwritten.
func (s *fileStore) mutate(fn func(devs map[string]*fileEntry) (bool, error)) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("device registry: %w", err)
	}
	unlock, err := lockFile(s.path + ".lock")
	if err != nil {
		return fmt.Errorf("lock device registry: %w", err)
	}
	defer unlock()
	devs, _, err := readRegistry(s.path)
	if err != nil {
		return err
	}
	changed, err := fn(devs)
	if err != nil || !changed {
		return err
	}
	data, err := marshalRegistry(devs)
	if err != nil {
		return fmt.Errorf("device registry %s: %w", s.path, err)
	}
	if err := writeFileAtomic(s.path, data, 0o600, true); err != nil {
		return fmt.Errorf("device registry: %w", err)
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("device registry: %w", err)
	}
	s.mu.Lock()
	s.devs, s.ident = devs, fi
	s.mu.Unlock()
	s.lastCheck.Store(time.Now().UnixNano())
	return nil
}

// writeFileAtomic replaces path with data: temp file in the same
// directory, fsync, rename, fsync of the directory. Readers see the old or
// the new file, never a partial one; with sync false the fsyncs are skipped
// (for status, which may be lost in a crash).
func writeFileAtomic(path string, data []byte, perm os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *fileStore) lookup(_ context.Context, id string) (record, error) {
	e := s.snapshot()[id]
	if e == nil {
		return record{}, ErrUnknownDevice
	}
	rec := record{secret: e.Secret, disabled: e.Disabled}
	if e.PSK != "" {
		rec.psk, _ = ParsePSK(e.PSK) // checked when the file was read
	}
	return rec, nil
}

func (s *fileStore) device(id string, e *fileEntry) Device {
	d := Device{ID: id}
	if e != nil {
		d.Registered, d.Disabled, d.HasPSK, d.Created = true, e.Disabled, e.PSK != "", e.Created
		if len(e.Meta) > 0 {
			d.Meta = maps.Clone(e.Meta)
		}
	}
	if st, ok := s.status.get(id); ok {
		d.Online, d.LastSeen = st.Online, st.LastSeen
	}
	return d
}

func (s *fileStore) get(_ context.Context, id string) (Device, error) {
	e := s.snapshot()[id]
	if e == nil {
		if _, ok := s.status.get(id); !ok || !s.track {
			return Device{}, ErrUnknownDevice
		}
	}
	return s.device(id, e), nil
}

func (s *fileStore) list(context.Context) ([]Device, error) {
	devs := s.snapshot()
	ids := slices.Collect(maps.Keys(devs))
	if s.track {
		for _, id := range s.status.ids() {
			if devs[id] == nil {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	out := make([]Device, len(ids))
	for i, id := range ids {
		out[i] = s.device(id, devs[id])
	}
	return out, nil
}

func (s *fileStore) put(_ context.Context, entries []storedEntry, replace bool) ([]Outcome, error) {
	out := make([]Outcome, len(entries))
	now := time.Now().UTC()
	err := s.mutate(func(devs map[string]*fileEntry) (bool, error) {
		changed := false
		for i, e := range entries {
			old := devs[e.id]
			switch {
			case old != nil && !replace:
				out[i] = Skipped
				continue
			case old != nil:
				out[i] = Updated
				n := *old
				n.Disabled, n.Meta = e.disabled, e.meta
				if e.secret != "" {
					n.Secret = e.secret
				}
				if e.psk != nil {
					n.PSK = fmt.Sprintf("%x", e.psk)
				}
				devs[e.id] = &n
			default:
				out[i] = Added
				created := e.created
				if created.IsZero() {
					created = now
				}
				n := &fileEntry{Secret: e.secret, Created: created, Disabled: e.disabled, Meta: e.meta}
				if e.psk != nil {
					n.PSK = fmt.Sprintf("%x", e.psk)
				}
				devs[e.id] = n
			}
			changed = true
		}
		return changed, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *fileStore) remove(_ context.Context, id string) error {
	err := s.mutate(func(devs map[string]*fileEntry) (bool, error) {
		if devs[id] == nil {
			return false, ErrUnknownDevice
		}
		delete(devs, id)
		return true, nil
	})
	if err == nil {
		s.status.forget(id)
	}
	return err
}

func (s *fileStore) modify(_ context.Context, id string, c change) error {
	return s.mutate(func(devs map[string]*fileEntry) (bool, error) {
		old := devs[id]
		if old == nil {
			return false, ErrUnknownDevice
		}
		n := *old
		if c.secret != nil {
			n.Secret = *c.secret
		}
		if c.psk != nil {
			n.PSK = ""
			if *c.psk != nil {
				n.PSK = fmt.Sprintf("%x", *c.psk)
			}
		}
		if c.disabled != nil {
			n.Disabled = *c.disabled
		}
		devs[id] = &n
		return true, nil
	})
}

func (s *fileStore) setStatus(_ context.Context, id string, online bool, at time.Time) error {
	registered := s.snapshot()[id] != nil
	if !registered && !s.track {
		return ErrUnknownDevice
	}
	return s.status.set(id, online, at, !registered)
}

func (s *fileStore) close() error {
	return s.status.close()
}
