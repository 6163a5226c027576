// Package mask hides secret values in output streams and strings.
package mask

import (
	"bytes"
	"io"
	"sort"
	"strings"
	"sync"
)

// Replacement is what a secret value is shown as.
const Replacement = "***"

// Masker replaces secret values with ***.
type Masker struct {
	secrets   [][]byte // longest first
	longest   int
	multiline bool // a secret spans lines: never flush at a newline early
}

// New masks the given values (empty values are ignored).
func New(values []string) *Masker {
	m := &Masker{}
	for _, v := range values {
		if v == "" {
			continue
		}
		m.secrets = append(m.secrets, []byte(v))
		if strings.ContainsAny(v, "\r\n") {
			m.multiline = true
		}
		if len(v) > m.longest {
			m.longest = len(v)
		}
	}
	sort.Slice(m.secrets, func(i, j int) bool { return len(m.secrets[i]) > len(m.secrets[j]) })
	return m
}

// String masks s.
func (m *Masker) String(s string) string {
	for _, v := range m.secrets {
		s = strings.ReplaceAll(s, string(v), Replacement)
	}
	return s
}

func (m *Masker) bytes(b []byte) []byte {
	for _, v := range m.secrets {
		b = bytes.ReplaceAll(b, v, []byte(Replacement))
	}
	return b
}

// Writer masks everything written through it. A secret split across two
// writes is still masked: the last longest-1 bytes are held back until more
// arrives, a line ends, or Flush is called.
func (m *Masker) Writer(w io.Writer) *Writer {
	return &Writer{m: m, w: w}
}

// Writer is a masking io.Writer; call Flush when the stream ends.
type Writer struct {
	m   *Masker
	w   io.Writer
	mu  sync.Mutex
	buf []byte
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m.longest == 0 {
		return w.w.Write(p)
	}
	w.buf = append(w.buf, p...)
	masked := w.m.bytes(w.buf)
	// Emit everything up to the last newline, or all but a tail that
	// could be the start of a secret.
	cut := bytes.LastIndexByte(masked, '\n') + 1
	if w.m.multiline {
		cut = 0
	}
	if keep := len(masked) - (w.m.longest - 1); keep > cut {
		cut = keep
	}
	if cut <= 0 {
		w.buf = masked
		return len(p), nil
	}
	if _, err := w.w.Write(masked[:cut]); err != nil {
		return 0, err
	}
	w.buf = append(w.buf[:0], masked[cut:]...)
	return len(p), nil
}

// Flush writes what is held back.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.m.bytes(w.buf))
	w.buf = w.buf[:0]
	return err
}
