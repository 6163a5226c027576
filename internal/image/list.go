package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/strata-ci/strata/internal/fsutil"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// List returns the built images, sorted by name, then newest first.
// Images in the middle of a build are not listed.
func List(cfg Config) ([]Built, error) {
	cfg = cfg.withDefaults()
	l := layout{cfg.ImagesDir}
	entries, err := os.ReadDir(filepath.Join(l.root, "built"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Built
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := readBuilt(l.built(e.Name()))
		if err != nil {
			continue // removed meanwhile, or not an image
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Remove deletes images. nameOrID is an image ID (or a unique prefix of at
// least 4 characters), or an image name (aliases followed): then every
// build of that name is removed, with its cached rootfs tarballs. A rootfs
// tarball is also removed with the last image that used it.
func Remove(cfg Config, nameOrID string) error {
	cfg = cfg.withDefaults()
	l := layout{cfg.ImagesDir}
	all, err := List(cfg)
	if err != nil {
		return err
	}
	var victims []Built
	byName := false
	name := nameOrID
	if canon, err := Resolve(cfg, nameOrID); err == nil {
		name = canon
	}
	for _, b := range all {
		if b.Name == name {
			victims = append(victims, b)
			byName = true
		}
	}
	if !byName {
		if len(nameOrID) < 4 {
			return fmt.Errorf("remove %q: %w (an ID needs at least 4 characters)", nameOrID, ErrNotFound)
		}
		for _, b := range all {
			if strings.HasPrefix(b.ID, nameOrID) {
				victims = append(victims, b)
			}
		}
		if len(victims) > 1 {
			return fmt.Errorf("remove %q: ambiguous ID prefix, matches %d images", nameOrID, len(victims))
		}
	}
	if len(victims) == 0 && !(byName || rootfsNamed(l, name)) {
		return fmt.Errorf("remove %q: %w", nameOrID, ErrNotFound)
	}
	removed := map[string]bool{}
	for _, b := range victims {
		if err := removeLocked(l, b.ID, l.built(b.ID)); err != nil {
			return err
		}
		removed[b.ID] = true
	}
	// Rootfs tarballs: all of that name, or those no image uses any more.
	used := map[string]bool{}
	for _, b := range all {
		if !removed[b.ID] {
			used[b.RootfsKey] = true
		}
	}
	keys, _ := os.ReadDir(filepath.Join(l.root, "rootfs"))
	for _, k := range keys {
		if !k.IsDir() {
			continue
		}
		recipeName := readRecipeName(l, k.Name())
		drop := false
		if recipeName == name {
			drop = !used[k.Name()] || byName
		}
		for _, b := range victims {
			if b.RootfsKey == k.Name() && !used[k.Name()] {
				drop = true
			}
		}
		if drop {
			if err := removeLocked(l, "rootfs-"+k.Name(), l.rootfs(k.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func rootfsNamed(l layout, name string) bool {
	keys, _ := os.ReadDir(filepath.Join(l.root, "rootfs"))
	for _, k := range keys {
		if readRecipeName(l, k.Name()) == name {
			return true
		}
	}
	return false
}

func readRecipeName(l layout, key string) string {
	data, err := os.ReadFile(filepath.Join(l.rootfs(key), recipeFile))
	if err != nil {
		return ""
	}
	var s struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(data, &s) != nil {
		return ""
	}
	return s.Name
}

// removeLocked moves dir out of sight (into tmp/) under its build lock, then
// deletes it, so no reader ever sees half an image.
func removeLocked(l layout, lockName, dir string) error {
	if err := os.MkdirAll(filepath.Join(l.root, "locks"), 0o755); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	unlock, ok, err := tryLock(l.lock(lockName))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("remove %s: a build of it is running", filepath.Base(dir))
	}
	defer unlock()
	if err := os.MkdirAll(l.tmp(), 0o755); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	trash := filepath.Join(l.tmp(), "removing-"+filepath.Base(dir))
	if err := os.Rename(dir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	_ = fsutil.SyncFile(filepath.Dir(dir))
	return removeTree(trash)
}
