package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/memstate"
)

// stateSaver stores a migration stream read from a pipe QEMU writes to.
type stateSaver struct {
	r    *os.File
	w    *memstate.Writer
	done chan struct{}
	err  error
	once sync.Once
}

// startSaver starts saving to statePath (deduplicated against parent, which
// may be nil) and returns the write end of the pipe to hand to QEMU.
func startSaver(statePath string, parent *memstate.Manifest) (*stateSaver, *os.File, error) {
	w, err := memstate.Create(statePath, parent)
	if err != nil {
		return nil, nil, fmt.Errorf("state file: %w", err)
	}
	pr, pw, err := statePipe()
	if err != nil {
		w.Abort()
		return nil, nil, err
	}
	s := &stateSaver{r: pr, w: w, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 1<<20)
		_, s.err = io.CopyBuffer(s.w, struct{ io.Reader }{pr}, buf)
		if s.err != nil {
			// Nobody reads any more: QEMU must get EPIPE and fail the
			// migration rather than block on a full pipe.
			pr.Close()
		}
	}()
	return s, pw, nil
}

// wait waits until the stream has ended (QEMU closed its end).
func (s *stateSaver) wait(ctx context.Context) error {
	select {
	case <-s.done:
	case <-ctx.Done():
		s.abort()
		return ctx.Err()
	}
	if s.err != nil {
		return fmt.Errorf("save state: %w", s.err)
	}
	return nil
}

// commit writes the manifest; the state exists from here on.
func (s *stateSaver) commit() (*memstate.Manifest, memstate.Stats, error) {
	<-s.done
	s.r.Close()
	return s.w.Commit()
}

// abort stops reading (QEMU may still hold the pipe open) and removes what
// was written.
func (s *stateSaver) abort() {
	s.once.Do(func() {
		s.r.Close() // unblocks the copy
		<-s.done
		s.w.Abort()
	})
}

// stateLoader feeds a saved state into a pipe QEMU reads from.
type stateLoader struct {
	w    *os.File
	done chan struct{}
	err  error
	once sync.Once
}

// startLoader returns the loader of the state at path, its manifest and
// the read end of the pipe to hand to QEMU.
func startLoader(path string) (*stateLoader, *memstate.Manifest, *os.File, error) {
	m, err := memstate.Load(path)
	if err != nil {
		return nil, nil, nil, err
	}
	pr, pw, err := statePipe()
	if err != nil {
		return nil, nil, nil, err
	}
	l := &stateLoader{w: pw, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		_, l.err = m.WriteTo(pw)
		pw.Close() // QEMU sees the end of the stream
	}()
	return l, m, pr, nil
}

// wait waits until the whole state has been written to the pipe.
func (l *stateLoader) wait(ctx context.Context) error {
	select {
	case <-l.done:
	case <-ctx.Done():
		l.abort()
		return ctx.Err()
	}
	if l.err != nil && !errors.Is(l.err, os.ErrClosed) {
		return fmt.Errorf("load state: %w", l.err)
	}
	return nil
}

// abort stops feeding the pipe.
func (l *stateLoader) abort() {
	l.once.Do(func() {
		l.w.Close()
		<-l.done
	})
}

// statePipe makes a pipe with a large buffer (1 MiB, the default maximum
// for unprivileged users) so QEMU and the state's reader or writer wake
// each other less often.
func statePipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("state pipe: %w", err)
	}
	_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	return r, w, nil
}
