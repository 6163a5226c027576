// Package initramfs writes Linux initramfs archives (cpio "newc" format)
// without root privileges: device nodes and owners are just header fields.
package initramfs

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// Writer writes a newc cpio archive.
type Writer struct {
	w     io.Writer
	ino   uint32
	off   int64
	dirs  map[string]bool
	err   error
	ended bool
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, ino: 1, dirs: map[string]bool{"": true, ".": true, "/": true}}
}

// Mode bits for entries.
const (
	typeDir  = 0o040000
	typeReg  = 0o100000
	typeLink = 0o120000
	typeChr  = 0o020000
)

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.off += int64(n)
	w.err = err
}

func (w *Writer) pad() {
	if r := w.off % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}

func (w *Writer) header(name string, mode uint32, size int64, rmaj, rmin uint32) {
	name = strings.TrimPrefix(name, "/")
	w.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, size, 0, 0, rmaj, rmin, len(name)+1, 0)
	w.write([]byte(hdr))
	w.write(append([]byte(name), 0))
	w.pad()
}

// mkparents adds directory entries for every missing parent of name.
func (w *Writer) mkparents(name string) {
	name = strings.Trim(name, "/")
	parts := strings.Split(name, "/")
	for i := 1; i < len(parts); i++ {
		d := strings.Join(parts[:i], "/")
		if !w.dirs[d] {
			w.dirs[d] = true
			w.header(d, typeDir|0o755, 0, 0, 0)
		}
	}
}

// Dir adds a directory (and its parents).
func (w *Writer) Dir(name string, perm os.FileMode) error {
	w.mkparents(name)
	n := strings.Trim(name, "/")
	if !w.dirs[n] {
		w.dirs[n] = true
		w.header(n, typeDir|uint32(perm.Perm()), 0, 0, 0)
	}
	return w.err
}

// File adds a regular file with content data.
func (w *Writer) File(name string, perm os.FileMode, data []byte) error {
	w.mkparents(name)
	w.header(name, typeReg|uint32(perm.Perm()), int64(len(data)), 0, 0)
	w.write(data)
	w.pad()
	return w.err
}

// CopyFile adds the host file src as name.
func (w *Writer) CopyFile(name string, perm os.FileMode, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return w.File(name, perm, b)
}

// Symlink adds a symbolic link name -> target.
func (w *Writer) Symlink(name, target string) error {
	w.mkparents(name)
	w.header(name, typeLink|0o777, int64(len(target)), 0, 0)
	w.write([]byte(target))
	w.pad()
	return w.err
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm os.FileMode, major, minor uint32) error {
	w.mkparents(name)
	w.header(name, typeChr|uint32(perm.Perm()), 0, major, minor)
	return w.err
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.ended {
		return w.err
	}
	w.ended = true
	w.header("TRAILER!!!", 0, 0, 0, 0)
	return w.err
}
