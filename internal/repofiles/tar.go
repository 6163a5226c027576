package repofiles

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Owner is the numeric owner given to copied files.
type Owner struct{ UID, GID int }

// WriteTar writes entries as a tar stream whose names are guest paths
// relative to "/" (extract it with CopyIn at "/"). When mtime is non-zero
// it replaces every file's own mtime (files put in place after a restore
// must not look older than the guest's clock). Deletes are written with
// deleteHeader.
func WriteTar(w io.Writer, root string, entries []Entry, deletes []string, owner Owner, mtime time.Time, deleteHeader func(string) *tar.Header) error {
	tw := tar.NewWriter(w)
	for _, p := range deletes {
		if err := tw.WriteHeader(deleteHeader(strings.TrimPrefix(p, "/"))); err != nil {
			return fmt.Errorf("tar delete %s: %w", p, err)
		}
	}
	for _, e := range entries {
		if err := writeEntry(tw, root, e, owner, mtime); err != nil {
			return err
		}
	}
	return tw.Close()
}

func writeEntry(tw *tar.Writer, root string, e Entry, owner Owner, mtime time.Time) error {
	abs := filepath.Join(root, filepath.FromSlash(e.Source))
	fi, err := os.Lstat(abs)
	if err != nil {
		return fmt.Errorf("tar %s: %w", e.Source, err)
	}
	hdr, err := tar.FileInfoHeader(fi, e.Link)
	if err != nil {
		return fmt.Errorf("tar %s: %w", e.Source, err)
	}
	hdr.Name = strings.TrimPrefix(e.Guest, "/")
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid = owner.UID, owner.GID
	hdr.Uname, hdr.Gname = "", ""
	if !mtime.IsZero() {
		hdr.ModTime = mtime
	}
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.Format = tar.FormatPAX
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", e.Source, err)
	}
	if fi.Mode()&fs.ModeType != 0 {
		return nil
	}
	f, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("tar %s: %w", e.Source, err)
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("tar %s (changed while copying?): %w", e.Source, err)
	}
	return nil
}
