package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/agentproto"
)

// readFileMax bounds ReadFile (it is meant for small files).
const readFileMax = 256 << 20

// owners resolves tar owner names to ids in the guest, with a cache.
type owners struct {
	users  map[string]int
	groups map[string]int
}

func (o *owners) uid(h *tar.Header) int {
	if h.Uname == "" {
		return h.Uid
	}
	if id, ok := o.users[h.Uname]; ok {
		return id
	}
	id := h.Uid
	if u, err := user.Lookup(h.Uname); err == nil {
		if n, err := strconv.Atoi(u.Uid); err == nil {
			id = n
		}
	}
	o.users[h.Uname] = id
	return id
}

func (o *owners) gid(h *tar.Header) int {
	if h.Gname == "" {
		return h.Gid
	}
	if id, ok := o.groups[h.Gname]; ok {
		return id
	}
	id := h.Gid
	if g, err := user.LookupGroup(h.Gname); err == nil {
		if n, err := strconv.Atoi(g.Gid); err == nil {
			id = n
		}
	}
	o.groups[h.Gname] = id
	return id
}

// copyIn extracts the tar stream r below dir. See agentproto.Client.CopyIn
// for the semantics.
func copyIn(dir string, r io.Reader) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("destination %q is not absolute", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	own := &owners{users: map[string]int{}, groups: map[string]int{}}
	type dirTime struct {
		path         string
		atime, mtime time.Time
	}
	var dirTimes []dirTime
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		target := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if h.PAXRecords[agentproto.DeletePAXKey] == "1" {
			if target == dir {
				return fmt.Errorf("%s: refusing to delete the destination itself", h.Name)
			}
			if err := os.RemoveAll(target); err != nil {
				return fmt.Errorf("delete %s: %w", h.Name, err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("%s: create parents: %w", h.Name, err)
		}
		mode := os.FileMode(h.Mode).Perm() | tarSpecialBits(h.Mode)
		uid, gid := own.uid(h), own.gid(h)
		atime := h.AccessTime
		if atime.IsZero() {
			atime = h.ModTime
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if st, err := os.Lstat(target); err == nil && !st.IsDir() {
				if err := os.Remove(target); err != nil {
					return fmt.Errorf("%s: replace with directory: %w", h.Name, err)
				}
			}
			if err := os.Mkdir(target, mode); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if err := os.Lchown(target, uid, gid); err != nil {
				return fmt.Errorf("%s: chown: %w", h.Name, err)
			}
			if err := os.Chmod(target, mode); err != nil {
				return fmt.Errorf("%s: chmod: %w", h.Name, err)
			}
			dirTimes = append(dirTimes, dirTime{target, atime, h.ModTime})
			continue
		case tar.TypeReg: // archive/tar reports old-style (TypeRegA) entries as TypeReg
			if err := writeRegular(target, tr, mode, uid, gid); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			if err := removeNonDir(target); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if err := os.Symlink(h.Linkname, target); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if err := os.Lchown(target, uid, gid); err != nil {
				return fmt.Errorf("%s: chown: %w", h.Name, err)
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.Clean("/"+h.Linkname))
			if src == target {
				continue
			}
			if err := removeNonDir(target); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if err := os.Link(src, target); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			continue // a hard link shares the source's metadata
		default:
			return fmt.Errorf("%s: unsupported tar entry type %q", h.Name, h.Typeflag)
		}
		if err := setTimes(target, atime, h.ModTime); err != nil {
			return fmt.Errorf("%s: set times: %w", h.Name, err)
		}
	}
	// Directory times last (creating entries inside changed them), deepest
	// first.
	for i := len(dirTimes) - 1; i >= 0; i-- {
		d := dirTimes[i]
		if err := setTimes(d.path, d.atime, d.mtime); err != nil {
			return fmt.Errorf("%s: set times: %w", d.path, err)
		}
	}
	return nil
}

// tarSpecialBits maps tar's setuid/setgid/sticky bits to os.FileMode.
func tarSpecialBits(m int64) os.FileMode {
	var f os.FileMode
	if m&0o4000 != 0 {
		f |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		f |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		f |= os.ModeSticky
	}
	return f
}

// removeNonDir removes target unless it is missing; a directory is
// removed recursively.
func removeNonDir(target string) error {
	st, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return os.RemoveAll(target)
	}
	return os.Remove(target)
}

// writeRegular writes r to target, in place when target is an existing
// regular file (same inode, so bind mounts and open readers see it). A
// running executable cannot be opened for writing (ETXTBSY): it is
// replaced by a new file renamed over it instead, as cp --remove would.
func writeRegular(target string, r io.Reader, mode os.FileMode, uid, gid int) error {
	if st, err := os.Lstat(target); err == nil && !st.Mode().IsRegular() {
		if err := removeNonDir(target); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, mode.Perm())
	rename := ""
	if errors.Is(err, unix.ETXTBSY) {
		f, err = os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".strata-*")
		if f != nil {
			rename = f.Name()
		}
	}
	if err != nil {
		return err
	}
	if err := fillFile(f, r, mode, uid, gid); err != nil {
		if rename != "" {
			_ = os.Remove(rename)
		}
		return err
	}
	if rename != "" {
		if err := os.Rename(rename, target); err != nil {
			_ = os.Remove(rename)
			return err
		}
	}
	return nil
}

// fillFile copies r into f, sets owner and mode, and closes f.
func fillFile(f *os.File, r io.Reader, mode os.FileMode, uid, gid int) error {
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return err
	}
	if uid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			_ = f.Close()
			return fmt.Errorf("chown: %w", err)
		}
	}
	// After chown, which clears setuid/setgid.
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return fmt.Errorf("chmod: %w", err)
	}
	return f.Close()
}

func setTimes(path string, atime, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// writeFile writes r to path in place, creating parents, then sets mode.
func writeFile(path string, mode uint32, r io.Reader) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("path %q is not absolute", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create parents: %w", err)
	}
	return writeRegular(path, r, os.FileMode(mode).Perm(), -1, -1)
}

// readFile streams path's content through send in chunks.
func readFile(path string, send func([]byte) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	var total int64
	buf := make([]byte, agentproto.ChunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			total += int64(n)
			if total > readFileMax {
				return fmt.Errorf("%s: larger than %d bytes", path, readFileMax)
			}
			if !send(append([]byte(nil), buf[:n]...)) {
				return errors.New("host went away")
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
