package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"sync"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
)

// Port is the agent's end of the byte stream to the host.
type Port interface {
	io.ReadWriteCloser
}

// OpenFunc opens the port. persistent reports that the port survives host
// disconnects (a virtio-serial device: reads return EOF while no host is
// connected, and the same descriptor carries the next connection); a
// non-persistent port (a socket) is reopened after EOF.
type OpenFunc func(ctx context.Context) (p Port, persistent bool, err error)

// eofPoll is how often a persistent port is read again while no host is
// connected (virtio-serial reads return EOF immediately then).
const eofPoll = 20 * time.Millisecond

// outQueue bounds frames waiting for the writer (each at most
// agentproto.MaxPayload bytes).
const outQueue = 64

// server serves one port: one session at a time, many requests per session.
type server struct {
	open   OpenFunc
	reaper *reaper
	logf   func(format string, args ...any)

	out chan outFrame

	mu      sync.Mutex
	port    Port
	portSet chan struct{} // closed and replaced whenever port changes
	sess    *session
}

type outFrame struct {
	sess *session
	b    []byte
}

// session is the state tied to one host connection (one hello nonce).
type session struct {
	nonce  string
	ctx    context.Context // done when the host went away or was replaced
	cancel context.CancelFunc

	mu   sync.Mutex
	reqs map[uint64]*request
}

func newServer(open OpenFunc, r *reaper, logger *log.Logger) *server {
	return &server{
		open:    open,
		reaper:  r,
		logf:    logger.Printf,
		out:     make(chan outFrame, outQueue),
		portSet: make(chan struct{}),
	}
}

// serve runs until ctx ends. It never returns because of port errors.
func (s *server) serve(ctx context.Context) error {
	go s.writeLoop(ctx)
	// Announce this agent process: a host still waiting for answers from a
	// previous one (crashed, restarted by systemd) gives up on them.
	boot := &session{ctx: ctx, cancel: func() {}, reqs: map[uint64]*request{}}
	info := agentInfo()
	s.sendRaw(boot, make([]byte, agentproto.PadSize))
	s.send(boot, &agentproto.Msg{T: agentproto.TReset, Info: &info})
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		p, persistent, err := s.open(ctx)
		if err != nil {
			s.logf("open port: %v", err)
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		s.setPort(p)
		s.readPort(ctx, p, persistent)
		s.setPort(nil)
		_ = p.Close()
		s.endSession("port closed")
	}
	s.endSession("agent stopping")
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (s *server) setPort(p Port) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.port = p
	close(s.portSet)
	s.portSet = make(chan struct{})
}

// readPort decodes frames until the port fails (or, for a non-persistent
// port, reaches EOF).
func (s *server) readPort(ctx context.Context, p Port, persistent bool) {
	dec := agentproto.NewDecoder(p)
	for ctx.Err() == nil {
		m, err := dec.Next()
		if err != nil {
			// The host went away (or never came). Whatever it was in the
			// middle of is void.
			s.endSession("host disconnected")
			dec.Reset()
			if persistent && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrNoProgress)) {
				sleepCtx(ctx, eofPoll)
				continue
			}
			if !errors.Is(err, io.EOF) {
				s.logf("read port: %v", err)
			}
			return
		}
		s.handle(ctx, m)
	}
}

// endSession kills the current session's foreground work and drops its
// pending output.
func (s *server) endSession(why string) {
	s.mu.Lock()
	sess := s.sess
	s.sess = nil
	s.mu.Unlock()
	if sess != nil {
		s.logf("session %.8s ended: %s", sess.nonce, why)
		sess.end(why)
	}
}

// end cancels the session: foreground processes are killed (by their
// request's watcher), pending input is aborted and queued output dropped.
func (sess *session) end(why string) {
	sess.cancel()
	sess.mu.Lock()
	reqs := make([]*request, 0, len(sess.reqs))
	for _, r := range sess.reqs {
		reqs = append(reqs, r)
	}
	sess.mu.Unlock()
	for _, r := range reqs {
		r.in.closeWith(fmt.Errorf("session ended: %s", why))
	}
}

func (s *server) current() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sess
}

// writeLoop writes queued frames of live sessions to the current port.
// Writes to a virtio-serial port block while no host is connected, which
// is why this is the only goroutine that writes.
func (s *server) writeLoop(ctx context.Context) {
	for {
		var f outFrame
		select {
		case <-ctx.Done():
			return
		case f = <-s.out:
		}
		for ctx.Err() == nil && f.sess.ctx.Err() == nil {
			s.mu.Lock()
			p, changed := s.port, s.portSet
			s.mu.Unlock()
			if p == nil {
				select {
				case <-changed:
				case <-f.sess.ctx.Done():
				case <-ctx.Done():
				}
				continue
			}
			if _, err := p.Write(f.b); err != nil {
				// The reader notices the broken port and ends the session;
				// this frame is lost with it.
				sleepCtx(ctx, eofPoll)
			}
			break
		}
	}
}

// send queues m for the session's host. It blocks while the queue is full
// (backpressure to the command producing output) and returns false without
// sending once the session is over.
func (s *server) send(sess *session, m *agentproto.Msg) bool {
	m.S = sess.nonce // "" for the announcement of a new agent process
	b, err := agentproto.EncodeFrame(m)
	if err != nil {
		s.logf("encode %s: %v", m.T, err)
		return false
	}
	return s.sendRaw(sess, b)
}

func (s *server) sendRaw(sess *session, b []byte) bool {
	select {
	case s.out <- outFrame{sess: sess, b: b}:
		return true
	case <-sess.ctx.Done():
		return false
	}
}

func (s *server) handle(ctx context.Context, m *agentproto.Msg) {
	if m.T == agentproto.THello {
		s.hello(ctx, m)
		return
	}
	sess := s.current()
	if sess == nil || m.S != sess.nonce {
		return // stale or from before the hello
	}
	switch m.T {
	case agentproto.TData, agentproto.TEOF, agentproto.TCancel, agentproto.TResize:
		sess.mu.Lock()
		req := sess.reqs[m.ID]
		sess.mu.Unlock()
		if req == nil {
			return // the request already finished
		}
		switch m.T {
		case agentproto.TData:
			req.in.put(m.Data)
		case agentproto.TEOF:
			req.in.closeWith(io.EOF)
		case agentproto.TCancel:
			req.doCancel()
		case agentproto.TResize:
			req.doResize(m.Rows, m.Cols)
		}
		return
	}
	req := newRequest(s, sess, m)
	sess.mu.Lock()
	if _, dup := sess.reqs[m.ID]; dup {
		sess.mu.Unlock()
		return
	}
	sess.reqs[m.ID] = req
	sess.mu.Unlock()
	go req.run()
}

func (s *server) hello(ctx context.Context, m *agentproto.Msg) {
	if m.S == "" {
		return
	}
	s.mu.Lock()
	old := s.sess
	same := old != nil && old.nonce == m.S
	var sess *session
	if same {
		sess = old
	} else {
		sctx, cancel := context.WithCancel(ctx)
		sess = &session{nonce: m.S, ctx: sctx, cancel: cancel, reqs: map[uint64]*request{}}
		s.sess = sess
	}
	s.mu.Unlock()
	if !same {
		if old != nil {
			s.logf("session %.8s ended: replaced", old.nonce)
			old.end("replaced by a new hello")
		}
		s.logf("session %.8s started", sess.nonce)
		// Complete whatever half frame the host's decoder may be stuck in.
		s.sendRaw(sess, make([]byte, agentproto.PadSize))
	}
	info := agentInfo()
	s.send(sess, &agentproto.Msg{T: agentproto.THelloAck, Info: &info})
}

// request is one request of a session.
type request struct {
	s    *server
	sess *session
	m    *agentproto.Msg
	in   *inbox

	mu        sync.Mutex
	cancelled bool
	kill      func()         // set while a process runs
	resize    func(r, c int) // set while a TTY process runs
	rows      int            // last requested window size
	cols      int
}

func newRequest(s *server, sess *session, m *agentproto.Msg) *request {
	r := &request{s: s, sess: sess, m: m}
	r.in = newInbox(func(n int) {
		s.send(sess, &agentproto.Msg{T: agentproto.TCredit, ID: m.ID, N: int64(n)})
	})
	return r
}

func (r *request) doCancel() {
	r.mu.Lock()
	r.cancelled = true
	kill := r.kill
	r.mu.Unlock()
	r.in.closeWith(errCancelled)
	if kill != nil {
		kill()
	}
}

func (r *request) doResize(rows, cols int) {
	r.mu.Lock()
	f := r.resize
	r.rows, r.cols = rows, cols
	r.mu.Unlock()
	if f != nil {
		f(rows, cols)
	}
}

// setResize registers how to resize the request's terminal and applies a
// size that arrived before the terminal existed.
func (r *request) setResize(f func(rows, cols int)) {
	r.mu.Lock()
	r.resize = f
	rows, cols := r.rows, r.cols
	r.mu.Unlock()
	if rows > 0 && cols > 0 {
		f(rows, cols)
	}
}

// setKill registers how to kill the request's process; it kills at once
// when the request was already cancelled.
func (r *request) setKill(kill func()) {
	r.mu.Lock()
	r.kill = kill
	c := r.cancelled
	r.mu.Unlock()
	if c {
		kill()
	}
}

var errCancelled = errors.New("cancelled")

func (r *request) out(stream int, data []byte) bool {
	return r.s.send(r.sess, &agentproto.Msg{T: agentproto.TOut, ID: r.m.ID, Stream: stream, Data: data})
}

func (r *request) run() {
	exit := &agentproto.Msg{T: agentproto.TExit, ID: r.m.ID}
	var err error
	switch r.m.T {
	case agentproto.TExec:
		exit.Code, err = r.s.runExec(r, r.m.Exec)
	case agentproto.TBg:
		err = r.s.startBackground(r, r.m.Exec, r.m.Path, time.Duration(r.m.N)*time.Millisecond)
	case agentproto.TCopyIn:
		err = copyIn(r.m.Path, r.in)
	case agentproto.TWrite:
		err = writeFile(r.m.Path, r.m.Mode, r.in)
	case agentproto.TRead:
		err = readFile(r.m.Path, func(b []byte) bool { return r.out(1, b) })
	case agentproto.TClock:
		err = setClock(r.m.N)
	case agentproto.TEntropy:
		err = addEntropy(r.m.Data)
	default:
		err = fmt.Errorf("unknown request type %q", r.m.T)
	}
	if err != nil {
		exit.Err = err.Error()
	}
	r.in.closeWith(errCancelled)
	r.s.send(r.sess, exit)
	r.sess.mu.Lock()
	delete(r.sess.reqs, r.m.ID)
	r.sess.mu.Unlock()
}

// inbox buffers a request's input (stdin, tar stream). The host never has
// more than agentproto.InputWindow bytes unacknowledged, so it is bounded;
// consumed bytes are acknowledged with credit frames.
type inbox struct {
	credit func(n int)

	mu      sync.Mutex
	cond    *sync.Cond
	chunks  [][]byte
	pending int   // consumed bytes not yet acknowledged
	err     error // set once closed (io.EOF on normal end)
}

// creditBatch is how many consumed bytes are acknowledged at once (fewer
// when the inbox runs empty).
const creditBatch = 256 << 10

func newInbox(credit func(int)) *inbox {
	b := &inbox{credit: credit}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *inbox) put(d []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return
	}
	b.chunks = append(b.chunks, d)
	b.cond.Broadcast()
}

func (b *inbox) closeWith(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	if err != io.EOF {
		b.chunks = nil // abort: drop what was not read
	}
	b.cond.Broadcast()
}

// Read implements io.Reader.
func (b *inbox) Read(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.chunks) == 0 && b.err == nil {
		b.cond.Wait()
	}
	if len(b.chunks) == 0 {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	n := copy(p, b.chunks[0])
	if n == len(b.chunks[0]) {
		b.chunks = b.chunks[1:]
	} else {
		b.chunks[0] = b.chunks[0][n:]
	}
	b.pending += n
	ack := 0
	if b.pending >= creditBatch || len(b.chunks) == 0 {
		ack, b.pending = b.pending, 0
	}
	b.mu.Unlock()
	if ack > 0 {
		b.credit(ack)
	}
	return n, nil
}
