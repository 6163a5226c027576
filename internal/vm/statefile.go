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

// pipeWork is a goroutine moving a state through a pipe: done is closed
// when it ends, err then says how.
type pipeWork struct {
	done chan struct{}
	err  error
	once sync.Once // guards the owner's abort
}

// finished waits for the work to end and returns its error; when ctx ends
// first it calls abort and returns ctx's error.
func (p *pipeWork) finished(ctx context.Context, abort func()) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		abort()
		return ctx.Err()
	}
}

// stateSaver stores a migration stream read from a pipe QEMU writes to.
type stateSaver struct {
	pipeWork
	r *os.File
	w *memstate.Writer
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
	s := &stateSaver{pipeWork: pipeWork{done: make(chan struct{})}, r: pr, w: w}
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
	err := s.finished(ctx, s.abort)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("save state: %w", err)
	}
	return err
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
	pipeWork
	w *os.File
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
	l := &stateLoader{pipeWork: pipeWork{done: make(chan struct{})}, w: pw}
	go func() {
		defer close(l.done)
		_, l.err = m.WriteTo(pw)
		pw.Close() // QEMU sees the end of the stream
	}()
	return l, m, pr, nil
}

// wait waits until the whole state has been written to the pipe.
func (l *stateLoader) wait(ctx context.Context) error {
	err := l.finished(ctx, l.abort)
	switch {
	case err == nil || ctx.Err() != nil:
		return err
	case errors.Is(err, os.ErrClosed):
		return nil // aborted on purpose
	default:
		return fmt.Errorf("load state: %w", err)
	}
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
