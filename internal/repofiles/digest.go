package repofiles

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/fsutil"
)

// Digester hashes repository files. A file whose size, mtime, ctime and
// inode all match the cached record is not read again; size and mtime
// alone are never trusted (SPEC §3).
type Digester struct {
	root      string
	cachePath string

	mu      sync.Mutex
	records map[string]statRecord
	dirty   bool
}

type statRecord struct {
	Size   int64  `json:"s"`
	Mtime  int64  `json:"m"`
	Ctime  int64  `json:"c"`
	Inode  uint64 `json:"i"`
	Digest string `json:"d"`
}

// NewDigester hashes files below root, keeping its stat cache at cachePath
// ("" for none).
func NewDigester(root, cachePath string) *Digester {
	d := &Digester{root: root, cachePath: cachePath, records: map[string]statRecord{}}
	if cachePath != "" {
		_ = fsutil.ReadJSON(cachePath, &d.records)
		if d.records == nil {
			d.records = map[string]statRecord{}
		}
	}
	return d
}

// Digest returns the content digest of a repository file (symlinks: of
// their target text; directories: "dir").
func (d *Digester) Digest(rel string) (string, error) {
	abs := filepath.Join(d.root, filepath.FromSlash(rel))
	var st unix.Stat_t
	if err := unix.Lstat(abs, &st); err != nil {
		return "", fmt.Errorf("digest %s: %w", rel, err)
	}
	mode := st.Mode & unix.S_IFMT
	switch mode {
	case unix.S_IFDIR:
		return "dir", nil
	case unix.S_IFLNK:
		target, err := os.Readlink(abs)
		if err != nil {
			return "", fmt.Errorf("digest %s: %w", rel, err)
		}
		return "link:" + target, nil
	}
	rec := statRecord{
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
		Inode: st.Ino,
	}
	d.mu.Lock()
	old, ok := d.records[rel]
	d.mu.Unlock()
	if ok && old.Size == rec.Size && old.Mtime == rec.Mtime && old.Ctime == rec.Ctime && old.Inode == rec.Inode {
		return old.Digest, nil
	}
	sum, err := hashFile(abs)
	if err != nil {
		return "", fmt.Errorf("digest %s: %w", rel, err)
	}
	rec.Digest = sum
	d.mu.Lock()
	d.records[rel] = rec
	d.dirty = true
	d.mu.Unlock()
	return sum, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Save writes the stat cache back (atomically) if it changed.
func (d *Digester) Save() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.dirty || d.cachePath == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(d.cachePath), 0o755); err != nil {
		return err
	}
	d.dirty = false
	return fsutil.WriteJSONAtomic(d.cachePath, d.records)
}

// DigestEntries digests every non-directory entry.
func (d *Digester) DigestEntries(entries []Entry) (map[string]string, error) {
	out := make(map[string]string, len(entries))
	for _, e := range entries {
		if e.Mode&fs.ModeDir != 0 {
			continue
		}
		sum, err := d.Digest(e.Source)
		if err != nil {
			return nil, err
		}
		out[e.Source] = sum
	}
	return out, nil
}
