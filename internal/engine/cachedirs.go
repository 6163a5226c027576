package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/fsutil"
	"github.com/strata-ci/strata/internal/vm"
)

// CACHE directories (SPEC §2) live outside the snapshot model: the host
// keeps the latest saved content of each as a tar file with a generation
// number. Before a step runs, a guest holding an older generation gets the
// latest content; after the step succeeds, changed content is saved as a
// new generation. Snapshots record which generation they hold, so a
// restored VM knows whether it is behind.

// cacheStore is where one Layerfile's CACHE content is kept on the host.
type cacheStore struct{ dir string }

func (r *runner) caches() cacheStore {
	return cacheStore{dir: r.cfg.Store.CacheDir(r.repeatableScope())}
}

func (c cacheStore) base(guestDir string) string {
	return filepath.Join(c.dir, safeFile(guestDir))
}

// flock takes an exclusive lock on path; the function releases it.
func flock(path string) (func(), error) {
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

// generation is the latest saved generation of guestDir (0: nothing saved).
func (c cacheStore) generation(guestDir string) int64 {
	b, err := os.ReadFile(c.base(guestDir) + ".gen")
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// syncCachesIn gives the guest the latest saved content of every CACHE
// directory in force where it holds an older one.
func (r *runner) syncCachesIn(ctx context.Context, s *step) error {
	var missing []string
	for _, dir := range s.before.cacheDirs {
		if !r.cacheReady[dir] {
			missing = append(missing, shellQuote(dir))
			r.cacheReady[dir] = true
		}
	}
	if len(missing) > 0 {
		// Create them, owned by the user of the step, if they don't exist.
		script := fmt.Sprintf("for d in %s; do [ -d \"$d\" ] || { mkdir -p \"$d\" && chown %s: \"$d\"; }; done", strings.Join(missing, " "), shellQuote(s.before.user))
		if err := r.rootScript(ctx, s, script); err != nil {
			return err
		}
	}
	if r.cfg.NoCacheDirs {
		return nil // the folders exist, empty: saved content is ignored
	}
	cs := r.caches()
	for _, dir := range s.before.cacheDirs {
		latest := cs.generation(dir)
		if latest == 0 || r.cacheGen[dir] >= latest {
			continue
		}
		unlock, err := flock(cs.base(dir) + ".lock")
		if err != nil {
			return err
		}
		latest = cs.generation(dir)
		f, err := os.Open(cs.base(dir) + ".tar")
		unlock() // the open file stays the content of generation latest
		if err != nil {
			return fmt.Errorf("CACHE %s: %w", dir, err)
		}
		if err := r.rootScript(ctx, s, "rm -rf "+shellQuote(dir)+"/* "+shellQuote(dir)+"/.[!.]*"); err != nil {
			f.Close()
			return err
		}
		err = r.m.CopyIn(ctx, "/", f)
		f.Close()
		if err != nil {
			return fmt.Errorf("CACHE %s: restore content: %w", dir, err)
		}
		r.cacheGen[dir] = latest
		r.cacheFP[dir] = ""
	}
	return nil
}

// saveCachesOut saves CACHE directories whose content the step changed.
func (r *runner) saveCachesOut(ctx context.Context, s *step) error {
	if r.cfg.NoCacheDirs {
		return nil
	}
	cs := r.caches()
	if err := os.MkdirAll(cs.dir, 0o755); err != nil {
		return err
	}
	for _, dir := range s.after.cacheDirs {
		var fp bytes.Buffer
		script := fmt.Sprintf("mkdir -p %[1]s && find %[1]s -printf '%%p %%s %%T@ %%m\\n' | sort | sha256sum", shellQuote(dir))
		code, err := r.m.Run(ctx, vm.Exec{Argv: []string{"/bin/sh", "-c", script}, Env: baseEnv()}, &fp, io.Discard)
		if err != nil || code != 0 {
			return fmt.Errorf("CACHE %s: fingerprint: exit %d: %v", dir, code, err)
		}
		if r.cacheFP[dir] == fp.String() {
			continue
		}
		tmp, err := os.CreateTemp(cs.dir, ".cache-*.tar")
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(dir, "/")
		code, err = r.m.Run(ctx, vm.Exec{Argv: []string{"tar", "-C", "/", "-cf", "-", rel}, Env: baseEnv()}, tmp, io.Discard)
		if err == nil && code != 0 {
			err = fmt.Errorf("tar exit %d", code)
		}
		if err == nil {
			err = tmp.Sync()
		}
		tmp.Close()
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("CACHE %s: save: %w", dir, err)
		}
		// Concurrent runs (and SPLIT copies) share the saved content: the
		// tar and its generation change together under a lock.
		unlock, err := flock(cs.base(dir) + ".lock")
		if err != nil {
			os.Remove(tmp.Name())
			return err
		}
		gen := cs.generation(dir) + 1
		err = os.Rename(tmp.Name(), cs.base(dir)+".tar")
		if err == nil {
			err = fsutil.WriteFileAtomic(cs.base(dir)+".gen", []byte(strconv.FormatInt(gen, 10)), 0o644)
		}
		unlock()
		if err != nil {
			os.Remove(tmp.Name())
			return err
		}
		r.cacheGen[dir], r.cacheFP[dir] = gen, fp.String()
		r.emit(Event{Kind: "info", Message: fmt.Sprintf("CACHE %s saved (generation %d)", dir, gen)})
	}
	return nil
}
