// Package repofiles turns COPY instructions into the set of repository
// files they bring into the VM, digests those files (with a stat cache
// that never trusts size and mtime alone), and writes them as tar streams
// for the guest agent.
package repofiles

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Entry is one file system object a COPY places in the guest.
type Entry struct {
	Source string // repository path, slash-separated, relative to the root
	Guest  string // absolute guest path
	Mode   fs.FileMode
	Link   string // symlink target for symlinks
}

// IsDir reports whether the entry is a directory.
func (e Entry) IsDir() bool { return e.Mode.IsDir() }

// Copy describes one COPY instruction.
type Copy struct {
	Root         string   // repository root (absolute)
	LayerfileDir string   // folder of the Layerfile, relative to Root ("" for the root)
	Sources      []string // as written: relative to LayerfileDir, or absolute from Root
	Dest         string   // as written
	Workdir      string   // current WORKDIR in the guest
}

// Select lists what a COPY brings in, in a stable order (parents before
// children). `.git` is skipped unless a source names it; paths excluded by
// .layerignore never come in.
func Select(c Copy, ig *Ignorer) ([]Entry, error) {
	dest := c.Dest
	if !path.IsAbs(dest) {
		dest = path.Join(c.Workdir, dest)
	}
	destIsDir := strings.HasSuffix(c.Dest, "/") || c.Dest == "." || len(c.Sources) > 1
	if len(c.Sources) > 1 && !strings.HasSuffix(c.Dest, "/") {
		return nil, fmt.Errorf("COPY with %d sources needs a destination ending in /", len(c.Sources))
	}
	var out []Entry
	for _, src := range c.Sources {
		matches, err := expandSource(c, src)
		if err != nil {
			return nil, err
		}
		for _, rel := range matches {
			if ig.ExcludedWithParents(rel) {
				continue // .layerignore'd files never come in, even when named
			}
			abs := filepath.Join(c.Root, filepath.FromSlash(rel))
			fi, err := os.Lstat(abs)
			if err != nil {
				return nil, fmt.Errorf("COPY %s: %w", src, err)
			}
			if fi.IsDir() {
				// A folder's contents go into the destination folder.
				entries, err := walkDir(c.Root, rel, dest, ig, path.Base(rel) == ".git")
				if err != nil {
					return nil, fmt.Errorf("COPY %s: %w", src, err)
				}
				out = append(out, entries...)
				continue
			}
			if rel != "" && ig.Ignored(rel, false) {
				continue
			}
			target := dest
			if destIsDir {
				target = path.Join(dest, path.Base(rel))
			}
			e, err := entryFor(abs, rel, target, fi)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// expandSource resolves a source to repository paths, expanding wildcards.
func expandSource(c Copy, src string) ([]string, error) {
	var rel string
	if path.IsAbs(src) {
		rel = path.Clean(strings.TrimPrefix(src, "/"))
	} else {
		rel = path.Clean(path.Join(c.LayerfileDir, src))
	}
	if rel == "." {
		rel = ""
	}
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("COPY %s: source is outside the repository", src)
	}
	if !strings.ContainsAny(rel, "*?[") {
		return []string{rel}, nil
	}
	matches, err := filepath.Glob(filepath.Join(c.Root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, fmt.Errorf("COPY %s: %w", src, err)
	}
	if len(matches) == 0 {
		return nil, fmt.Errorf("COPY %s: no file matches", src)
	}
	var out []string
	for _, m := range matches {
		r, err := filepath.Rel(c.Root, m)
		if err != nil {
			return nil, err
		}
		out = append(out, filepath.ToSlash(r))
	}
	return out, nil
}

func walkDir(root, rel, dest string, ig *Ignorer, gitNamed bool) ([]Entry, error) {
	var out []Entry
	base := filepath.Join(root, filepath.FromSlash(rel))
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		sub, _ := filepath.Rel(base, p)
		sub = filepath.ToSlash(sub)
		if sub == "." {
			return nil
		}
		repoRel := path.Join(rel, sub)
		if d.IsDir() && d.Name() == ".git" && !gitNamed {
			return fs.SkipDir
		}
		if d.IsDir() && d.Name() == ".strata" && rel == "" && sub == ".strata" {
			return fs.SkipDir
		}
		if ig.Ignored(repoRel, d.IsDir()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e, err := entryFor(p, repoRel, path.Join(dest, sub), fi)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

func entryFor(abs, rel, guest string, fi fs.FileInfo) (Entry, error) {
	e := Entry{Source: rel, Guest: guest, Mode: fi.Mode()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(abs)
		if err != nil {
			return Entry{}, err
		}
		e.Link = target
	}
	return e, nil
}

// Merge combines the entries of several COPYs: a later COPY to the same
// guest path wins. The result is sorted by guest path.
func Merge(lists ...[]Entry) []Entry {
	byGuest := map[string]Entry{}
	for _, l := range lists {
		for _, e := range l {
			byGuest[e.Guest] = e
		}
	}
	out := make([]Entry, 0, len(byGuest))
	for _, e := range byGuest {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Guest < out[j].Guest })
	return out
}
