package enrich

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// snapshotFile is the snapshot's name inside Options.Snapshot.Dir.
const snapshotFile = "refcache.json"

// snapshotVersion is the format version written; readers refuse others.
const snapshotVersion = 1

// snapshotDoc is the on-disk snapshot: the cached Redis hashes by key.
type snapshotDoc struct {
	Version   int             `json:"version"`
	WrittenAt time.Time       `json:"written_at"`
	Entries   map[string]hash `json:"entries"`
}

// decodeSnapshot parses a snapshot file.
func decodeSnapshot(b []byte) (*snapshotDoc, error) {
	var doc snapshotDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	if doc.Version != snapshotVersion {
		return nil, fmt.Errorf("%w: format version %d, want %d", ErrSnapshot, doc.Version, snapshotVersion)
	}
	return &doc, nil
}

// loadSnapshot fills the empty cache from the snapshot, every entry
// already expired: it is used (marked stale) only until Redis answers.
// A missing or unreadable snapshot is logged, not fatal.
func (e *Enricher) loadSnapshot() {
	b, err := os.ReadFile(e.snapshotPath)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var doc *snapshotDoc
	if err == nil {
		doc, err = decodeSnapshot(b)
	}
	if err != nil {
		e.log.Warn("ignoring enrich snapshot", "file", e.snapshotPath, "error", err)
		return
	}
	e.mu.Lock()
	for k, fields := range doc.Entries {
		if len(fields) > 0 {
			e.cache.set(k, fields, time.Time{}, time.Time{})
		}
	}
	n := e.cache.len()
	e.snapVersion = e.cache.version
	e.mu.Unlock()
	e.log.Info("loaded enrich snapshot", "file", e.snapshotPath, "entries", n, "written_at", doc.WrittenAt)
}

// runSnapshots rewrites the snapshot every interval when the cache changed.
func (e *Enricher) runSnapshots(ctx context.Context) {
	t := time.NewTicker(e.opts.Snapshot.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := e.writeSnapshot(); err != nil {
				e.log.Warn("cannot write enrich snapshot", "file", e.snapshotPath, "error", err)
			}
		}
	}
}

// writeSnapshot writes the cache's hashes to the snapshot file if the
// cache changed since the last write. The file is replaced atomically
// (temporary file, fsync, rename, fsync of the directory), so a crash
// leaves the old snapshot or the new one, never a torn one.
func (e *Enricher) writeSnapshot() error {
	e.snapMu.Lock()
	defer e.snapMu.Unlock()

	e.mu.Lock()
	version := e.cache.version
	if version == e.snapVersion {
		e.mu.Unlock()
		return nil
	}
	doc := snapshotDoc{Version: snapshotVersion, WrittenAt: time.Now().UTC(), Entries: make(map[string]hash, e.cache.len())}
	// The hashes are never modified once cached, so sharing them with the
	// encoder outside the lock is safe.
	e.cache.each(func(key string, fields hash) { doc.Entries[key] = fields })
	e.mu.Unlock()

	dir := filepath.Dir(e.snapshotPath)
	tmp, err := os.CreateTemp(dir, "."+snapshotFile+".*.tmp")
	if err != nil {
		return fmt.Errorf("write enrich snapshot: %w", err)
	}
	defer func() {
		if tmp != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<16)
	if err := json.NewEncoder(w).Encode(&doc); err != nil {
		return fmt.Errorf("write enrich snapshot %s: %w", tmp.Name(), err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write enrich snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync enrich snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close enrich snapshot %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), e.snapshotPath); err != nil {
		return fmt.Errorf("replace enrich snapshot %s: %w", e.snapshotPath, err)
	}
	tmp = nil
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	e.snapVersion = version
	return nil
}
