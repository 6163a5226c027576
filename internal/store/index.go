package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/fsutil"
)

const maxPerKey = 4

type keyEntry struct {
	Layers []string `json:"layers"` // newest first
}

func (s *Store) keyPath(key string) string {
	return filepath.Join(s.root, "keys", safeName(key)+".json")
}

// Candidates returns the committed layers recorded for a step key, newest
// first. Several can exist when files read by the steps differed.
func (s *Store) Candidates(key string) []Layer {
	var e keyEntry
	if err := fsutil.ReadJSON(s.keyPath(key), &e); err != nil {
		return nil
	}
	var out []Layer
	for _, id := range e.Layers {
		if m, err := s.Get(id); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// Record adds layer id under key. Concurrent runs may race; the index is
// rewritten atomically under an exclusive lock on the key file.
func (s *Store) Record(key, id string) error {
	unlock, err := s.lockFile(s.keyPath(key) + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	var e keyEntry
	_ = fsutil.ReadJSON(s.keyPath(key), &e)
	ids := []string{id}
	for _, old := range e.Layers {
		if old != id && len(ids) < maxPerKey {
			if _, err := s.Get(old); err == nil {
				ids = append(ids, old)
			}
		}
	}
	e.Layers = ids
	return fsutil.WriteJSONAtomic(s.keyPath(key), e)
}

type pointer struct {
	Layer string `json:"layer"`
}

func (s *Store) repeatablePath(scope, branch, key string) string {
	return filepath.Join(s.root, "repeatable", safeName(scope), safeName(branch), safeName(key)+".json")
}

// Repeatable returns the layer that holds the state after the last
// successful run of a RUN REPEATABLE step, looked up for branch and then for
// each fallback branch in order.
func (s *Store) Repeatable(scope, key string, branches ...string) (Layer, bool) {
	for _, b := range branches {
		if b == "" {
			continue
		}
		var p pointer
		if err := fsutil.ReadJSON(s.repeatablePath(scope, b, key), &p); err != nil {
			continue
		}
		if m, err := s.Get(p.Layer); err == nil {
			return m, true
		}
	}
	return Layer{}, false
}

// SetRepeatable points the RUN REPEATABLE state of (scope, branch, key) at
// layer id. Last writer wins.
func (s *Store) SetRepeatable(scope, branch, key, id string) error {
	p := s.repeatablePath(scope, branch, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("set repeatable state: %w", err)
	}
	return fsutil.WriteJSONAtomic(p, pointer{Layer: id})
}

// RepeatableRefs lists every layer a RUN REPEATABLE pointer holds (gc keeps them longest).
func (s *Store) RepeatableRefs() map[string]bool {
	refs := map[string]bool{}
	_ = filepath.WalkDir(filepath.Join(s.root, "repeatable"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".json" {
			return nil
		}
		var p pointer
		if fsutil.ReadJSON(path, &p) == nil {
			refs[p.Layer] = true
		}
		return nil
	})
	return refs
}

// SaveRun stores the report of the last run of a repository (scope).
func (s *Store) SaveRun(scope string, report any) error {
	return fsutil.WriteJSONAtomic(filepath.Join(s.root, "runs", safeName(scope)+".json"), report)
}

// LoadRun reads the report saved by SaveRun.
func (s *Store) LoadRun(scope string, report any) error {
	err := fsutil.ReadJSON(filepath.Join(s.root, "runs", safeName(scope)+".json"), report)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no run recorded for this repository yet: %w", ErrNotFound)
	}
	return err
}

// Runs calls fn with the decoder of every saved run report, newest first.
func (s *Store) Runs(fn func(load func(report any) error) bool) {
	dir := filepath.Join(s.root, "runs")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type item struct {
		path string
		mod  int64
	}
	var items []item
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && filepath.Ext(e.Name()) == ".json" {
			items = append(items, item{filepath.Join(dir, e.Name()), fi.ModTime().UnixNano()})
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].mod > items[j].mod })
	for _, it := range items {
		p := it.path
		if !fn(func(report any) error { return fsutil.ReadJSON(p, report) }) {
			return
		}
	}
}

// CacheDir is where the saved content of CACHE directories for scope lives.
func (s *Store) CacheDir(scope string) string {
	return filepath.Join(s.root, "cache", safeName(scope))
}

// LockShared takes the store lock shared (runs); LockExclusive takes it
// exclusively (gc). The returned function releases it.
func (s *Store) LockShared() (func(), error) { return s.flock(unix.LOCK_SH) }

// LockExclusive waits until no run holds the store, then holds it alone.
func (s *Store) LockExclusive() (func(), error) { return s.flock(unix.LOCK_EX) }

func (s *Store) flock(how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.root, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock store: %w", err)
	}
	return func() { f.Close() }, nil
}

func (s *Store) lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// safeName turns an arbitrary string into a file name: short readable
// names stay, anything else becomes its digest.
func safeName(s string) string {
	ok := len(s) > 0 && len(s) <= 64
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			ok = false
			break
		}
	}
	if ok && s[0] != '.' {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}
