package devices

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"
)

// statusVersion is the status file format version.
const statusVersion = 1

// statusDoc is the status side file of the file backend.
type statusDoc struct {
	Version int                     `json:"version"`
	Written time.Time               `json:"written"`
	Devices map[string]deviceStatus `json:"devices"`
}

// errStatusFull is returned when open mode has tracked maxTracked devices.
var errStatusFull = errors.New("status table full: too many unregistered devices")

// statusFile keeps online/last-seen status for the file backend in memory
// and writes it to a JSON side file every flush interval when it changed,
// not per connect.
//
// The first process that reports status (the gateway) owns the file: it
// clears the online flags it loaded, since the connections they describe
// belonged to a process that is gone, and from then on only writes it.
// Other processes (`iotgw devices list`) only read it, re-reading when it
// changed at most once per second.
type statusFile struct {
	path  string
	flush time.Duration
	every time.Duration // min time between re-reads by a non-owner; tests set 0
	log   *slog.Logger

	mu        sync.Mutex
	m         map[string]deviceStatus
	owned     bool
	dirty     bool
	ident     fs.FileInfo
	lastCheck time.Time
	stop      chan struct{} // closed by close; nil until the flusher starts
	done      chan struct{}
}

func openStatus(path string, flush time.Duration, logger *slog.Logger) (*statusFile, error) {
	if flush <= 0 {
		flush = DefaultStatusFlush
	}
	s := &statusFile{path: path, flush: flush, every: reloadEvery, log: logger, m: map[string]deviceStatus{}}
	s.reread()
	return s, nil
}

// reread loads the file if it changed since the last read. A missing or
// unreadable status file is not an error: status is advisory and rebuilt
// as devices connect. Called with s.mu held or before s is shared.
func (s *statusFile) reread() {
	fi, err := os.Stat(s.path)
	if err != nil || sameFile(s.ident, fi) {
		return
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		return
	}
	var doc statusDoc
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != statusVersion {
		s.log.Warn("ignoring unreadable device status file", "file", s.path, "error", err)
		s.ident = fi
		return
	}
	s.m, s.ident = doc.Devices, fi
	if s.m == nil {
		s.m = map[string]deviceStatus{}
	}
}

func (s *statusFile) refresh() {
	if s.owned || time.Since(s.lastCheck) < s.every {
		return
	}
	s.lastCheck = time.Now()
	s.reread()
}

func (s *statusFile) get(id string) (deviceStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh()
	st, ok := s.m[id]
	return st, ok
}

func (s *statusFile) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh()
	return slices.Collect(maps.Keys(s.m))
}

func (s *statusFile) set(id string, online bool, at time.Time, unregistered bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.owned {
		s.own()
	}
	cur, ok := s.m[id]
	switch {
	case !ok && unregistered && len(s.m) >= maxTracked:
		return errStatusFull
	case ok && at.Before(cur.LastSeen):
		return nil // older than what we know: a late event
	}
	s.m[id] = deviceStatus{Online: online, LastSeen: at}
	s.dirty = true
	return nil
}

// own makes this process the writer of the status file. Called with s.mu
// held.
func (s *statusFile) own() {
	s.reread()
	for id, st := range s.m {
		st.Online = false
		s.m[id] = st
	}
	s.owned, s.dirty = true, true
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.flusher(s.stop, s.done)
}

func (s *statusFile) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; ok {
		delete(s.m, id)
		s.dirty = s.dirty || s.owned
	}
}

func (s *statusFile) flusher(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.flush)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if err := s.write(); err != nil {
				s.log.Warn("cannot write device status; will retry", "file", s.path, "error", err)
			}
		}
	}
}

// write saves the status if it changed. Without fsync: after a crash the
// previous or no status is fine, devices report again when they connect.
func (s *statusFile) write() error {
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	doc := statusDoc{Version: statusVersion, Written: time.Now().UTC(), Devices: maps.Clone(s.m)}
	s.dirty = false
	s.mu.Unlock()
	data, err := json.Marshal(doc)
	if err == nil {
		err = writeFileAtomic(s.path, data, 0o644, false)
	}
	if err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("device status %s: %w", s.path, err)
	}
	return nil
}

// close stops the flusher and writes what changed since its last run.
func (s *statusFile) close() error {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.stop = nil
	s.mu.Unlock()
	if stop == nil {
		return nil
	}
	close(stop)
	<-done
	return s.write()
}
