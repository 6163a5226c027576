package agentproto

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// ErrDisconnected is returned (wrapped) when the connection to the agent
// broke during a call. The next call redials and handshakes again.
var ErrDisconnected = errors.New("connection to guest agent lost")

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("agent client closed")

// RemoteError is a failure reported by the agent (the request reached it).
type RemoteError struct {
	Op  string // request type, e.g. "exec", "copyin"
	Msg string // the agent's message
}

func (e *RemoteError) Error() string { return fmt.Sprintf("agent %s: %s", e.Op, e.Msg) }

// helloInterval is how often an unanswered hello is repeated on a
// connection; a dial that fails is retried after dialRetry.
const (
	helloInterval = 500 * time.Millisecond
	dialRetry     = 50 * time.Millisecond
	// cancelWait bounds how long a cancelled call waits for the agent to
	// report the killed process's exit.
	cancelWait = 10 * time.Second
)

// Client talks to one guest agent. It is safe for concurrent use; calls
// share one connection. After the connection breaks, the next call redials
// and handshakes again.
type Client struct {
	dial func(ctx context.Context) (net.Conn, error)

	mu     sync.Mutex // held while connecting
	cc     *conn
	closed bool
}

// NewClient returns a Client that reaches the agent through dial, which
// opens a fresh byte stream (the QEMU virtio-serial unix socket).
func NewClient(dial func(ctx context.Context) (net.Conn, error)) *Client {
	return &Client{dial: dial}
}

// Handshake drops any current connection, then dials and handshakes until
// the agent answers or ctx ends. Call it after every restore: only frames of
// the new session are accepted afterwards.
func (c *Client) Handshake(ctx context.Context) (Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return Info{}, ErrClosed
	}
	if c.cc != nil {
		c.cc.fail(errors.New("replaced by a new handshake"))
		c.cc = nil
	}
	cc, err := c.connect(ctx)
	if err != nil {
		return Info{}, err
	}
	c.cc = cc
	return cc.info, nil
}

// Close closes the connection. Calls in progress fail with ErrDisconnected.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.cc != nil {
		c.cc.fail(ErrClosed)
		c.cc = nil
	}
	return nil
}

// current returns a live connection, connecting if needed.
func (c *Client) current(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.cc != nil {
		select {
		case <-c.cc.done:
			c.cc = nil
		default:
			return c.cc, nil
		}
	}
	cc, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.cc = cc
	return cc, nil
}

// connect dials until a connection's hello is acknowledged.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	var lastErr error
	for {
		if err := ctx.Err(); err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("handshake with guest agent: %w (last error: %v)", err, lastErr)
			}
			return nil, fmt.Errorf("handshake with guest agent: %w", err)
		}
		nc, err := c.dial(ctx)
		if err != nil {
			lastErr = err
			sleepCtx(ctx, dialRetry)
			continue
		}
		cc, err := handshakeConn(ctx, nc)
		if err == nil {
			return cc, nil
		}
		lastErr = err
		sleepCtx(ctx, dialRetry)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func newNonce() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// conn is one session over one byte stream.
type conn struct {
	nc    net.Conn
	nonce string
	info  Info

	wmu sync.Mutex // serialises frame writes

	mu     sync.Mutex
	nextID uint64
	calls  map[uint64]*call
	ready  chan struct{} // closed when the hello-ack arrived
	done   chan struct{} // closed when the connection is dead
	err    error
}

// handshakeConn pads, says hello (repeatedly) and waits for the ack.
func handshakeConn(ctx context.Context, nc net.Conn) (*conn, error) {
	cc := &conn{
		nc:    nc,
		nonce: newNonce(),
		calls: map[uint64]*call{},
		ready: make(chan struct{}),
		done:  make(chan struct{}),
	}
	go cc.readLoop()
	hello := &Msg{T: THello, S: cc.nonce, N: ProtocolVersion}
	pad := make([]byte, PadSize)
	// The first write may block while the guest is not reading yet (port
	// not open, socket buffer full); deadlines keep the loop responsive.
	padded := false
	tick := time.NewTicker(helloInterval)
	defer tick.Stop()
	for {
		if !padded {
			_ = nc.SetWriteDeadline(time.Now().Add(helloInterval))
			if _, err := nc.Write(pad); err == nil {
				padded = true
			} else if !isTimeout(err) {
				cc.fail(err)
				return nil, fmt.Errorf("write hello: %w", err)
			}
		}
		if padded {
			_ = nc.SetWriteDeadline(time.Now().Add(helloInterval))
			if err := cc.writeMsg(hello); err != nil && !isTimeout(err) {
				cc.fail(err)
				return nil, fmt.Errorf("write hello: %w", err)
			}
		}
		select {
		case <-cc.ready:
			_ = nc.SetWriteDeadline(time.Time{})
			if cc.info.Protocol != ProtocolVersion {
				cc.fail(errors.New("protocol mismatch"))
				return nil, fmt.Errorf("guest agent %s speaks protocol %d, want %d",
					cc.info.AgentVersion, cc.info.Protocol, ProtocolVersion)
			}
			return cc, nil
		case <-cc.done:
			return nil, fmt.Errorf("handshake: %w", cc.err)
		case <-ctx.Done():
			cc.fail(ctx.Err())
			return nil, fmt.Errorf("handshake with guest agent: %w", ctx.Err())
		case <-tick.C:
			// Half-written frames from a timed-out write are harmless: the
			// agent resynchronises on the next intact frame.
		}
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func (cc *conn) writeMsg(m *Msg) error {
	b, err := EncodeFrame(m)
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_, err = cc.nc.Write(b)
	return err
}

// send writes m tagged with this session. A write interrupted by ctx or
// failed kills the connection (the stream may now hold half a frame).
func (cc *conn) send(ctx context.Context, m *Msg) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.S = cc.nonce
	b, err := EncodeFrame(m)
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = cc.nc.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	_, err = cc.nc.Write(b)
	if !stop() {
		<-fired
		if err != nil {
			cc.fail(ctx.Err())
			return ctx.Err()
		}
		_ = cc.nc.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		cc.fail(err)
		return fmt.Errorf("send %s: %w: %v", m.T, ErrDisconnected, err)
	}
	return nil
}

// cause is why the (dead) connection died, always matching ErrDisconnected.
func (cc *conn) cause() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err == nil || errors.Is(cc.err, ErrDisconnected) {
		return cmpOr(cc.err, ErrDisconnected)
	}
	return fmt.Errorf("%w: %v", ErrDisconnected, cc.err)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// fail marks the connection dead and closes it.
func (cc *conn) fail(err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	select {
	case <-cc.done:
		return
	default:
	}
	cc.err = err
	close(cc.done)
	_ = cc.nc.Close()
}

func (cc *conn) readLoop() {
	dec := NewDecoder(cc.nc)
	for {
		m, err := dec.Next()
		if err != nil {
			cc.fail(fmt.Errorf("%w: %v", ErrDisconnected, err))
			return
		}
		if m.T == TReset && m.S == "" {
			select {
			case <-cc.ready:
				// The agent process we were talking to is gone.
				cc.fail(fmt.Errorf("%w: the guest agent restarted", ErrDisconnected))
				return
			default:
				continue // a fresh agent announcing itself before our hello
			}
		}
		if m.S != cc.nonce {
			continue // stale: from before a restore or another session
		}
		if m.T == THelloAck {
			select {
			case <-cc.ready:
			default:
				if m.Info != nil {
					cc.info = *m.Info
				}
				close(cc.ready)
			}
			continue
		}
		cc.mu.Lock()
		cl := cc.calls[m.ID]
		cc.mu.Unlock()
		if cl != nil {
			cl.deliver(m)
		}
	}
}

// call is one request in flight.
type call struct {
	cc    *conn
	id    uint64
	op    string
	onOut func(stream int, data []byte) // runs on the read loop

	mu     sync.Mutex
	acked  int64
	credit chan struct{} // pinged when acked grows
	exit   chan *Msg     // receives the exit message
}

func (cc *conn) newCall(op string, onOut func(int, []byte)) *call {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.nextID++
	cl := &call{cc: cc, id: cc.nextID, op: op, onOut: onOut,
		credit: make(chan struct{}, 1), exit: make(chan *Msg, 1)}
	cc.calls[cl.id] = cl
	return cl
}

func (cl *call) release() {
	cl.cc.mu.Lock()
	delete(cl.cc.calls, cl.id)
	cl.cc.mu.Unlock()
}

func (cl *call) deliver(m *Msg) {
	switch m.T {
	case TOut:
		if cl.onOut != nil {
			cl.onOut(m.Stream, m.Data)
		}
	case TCredit:
		cl.mu.Lock()
		cl.acked += m.N
		cl.mu.Unlock()
		select {
		case cl.credit <- struct{}{}:
		default:
		}
	case TExit:
		select {
		case cl.exit <- m:
		default:
		}
	}
}

// errExited tells the input pump that the request already finished.
var errExited = errors.New("request finished")

// pump sends r as data frames (respecting the credit window), then eof.
// It stops early when the request finished or the connection died.
func (cl *call) pump(ctx context.Context, r io.Reader, exited <-chan struct{}) error {
	buf := make([]byte, ChunkSize)
	var sent int64
	for {
		// Wait for window space.
		for {
			cl.mu.Lock()
			room := sent-cl.acked < InputWindow
			cl.mu.Unlock()
			if room {
				break
			}
			select {
			case <-cl.credit:
			case <-exited:
				return errExited
			case <-cl.cc.done:
				return ErrDisconnected
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		n, rerr := r.Read(buf)
		select {
		case <-exited:
			return errExited
		default:
		}
		if n > 0 {
			if err := cl.cc.send(ctx, &Msg{T: TData, ID: cl.id, Data: buf[:n]}); err != nil {
				return err
			}
			sent += int64(n)
		}
		if rerr == io.EOF {
			return cl.cc.send(ctx, &Msg{T: TEOF, ID: cl.id})
		}
		if rerr != nil {
			// End the input anyway, so the command does not wait forever.
			_ = cl.cc.send(ctx, &Msg{T: TEOF, ID: cl.id})
			return rerr
		}
	}
}

// wait waits for the exit message. On ctx cancellation it asks the agent
// to cancel and waits (bounded) for the exit.
func (cl *call) wait(ctx context.Context) (*Msg, error) {
	select {
	case m := <-cl.exit:
		return m, nil
	case <-cl.cc.done:
		return nil, fmt.Errorf("%s: %w", cl.op, cl.cc.cause())
	case <-ctx.Done():
	}
	// Cancel with a fresh context: ctx is already done.
	cctx, cancel := context.WithTimeout(context.Background(), cancelWait)
	defer cancel()
	if err := cl.cc.send(cctx, &Msg{T: TCancel, ID: cl.id}); err != nil {
		return nil, fmt.Errorf("%s: cancel: %w", cl.op, ctx.Err())
	}
	select {
	case m := <-cl.exit:
		return m, fmt.Errorf("%s: %w", cl.op, ctx.Err())
	case <-cl.cc.done:
	case <-cctx.Done():
	}
	return nil, fmt.Errorf("%s: %w", cl.op, ctx.Err())
}

// do runs a request that has no input stream and no output.
func (c *Client) do(ctx context.Context, m *Msg, onOut func(int, []byte)) (*Msg, error) {
	cc, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	cl := cc.newCall(m.T, onOut)
	defer cl.release()
	m.ID = cl.id
	if err := cc.send(ctx, m); err != nil {
		return nil, err
	}
	if m.onSent != nil {
		done := make(chan struct{})
		defer close(done)
		m.onSent(cc, cl.id, done)
	}
	return cl.wait(ctx)
}

// doInput runs a request followed by an input stream from r.
func (c *Client) doInput(ctx context.Context, m *Msg, r io.Reader, onOut func(int, []byte)) (*Msg, error) {
	cc, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	cl := cc.newCall(m.T, onOut)
	defer cl.release()
	m.ID = cl.id
	if err := cc.send(ctx, m); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	if m.onSent != nil {
		m.onSent(cc, cl.id, exited)
	}
	pumpErr := make(chan error, 1)
	go func() { pumpErr <- cl.pump(ctx, r, exited) }()
	res, err := cl.wait(ctx)
	close(exited)
	if err != nil {
		return res, err
	}
	// The agent may answer before the input was consumed (an extraction
	// error); a read error on r, though, is ours to report.
	select {
	case perr := <-pumpErr:
		if perr != nil && !errors.Is(perr, errExited) && res.Err == "" {
			return res, fmt.Errorf("%s: reading input: %w", m.T, perr)
		}
	default:
	}
	return res, nil
}

func remoteErr(op string, m *Msg) error {
	if m.Err == "" {
		return nil
	}
	return &RemoteError{Op: op, Msg: m.Err}
}

// Exec runs r in the guest, streaming its output to stdout and stderr (nil
// discards), feeding stdin when non-nil, and returns its exit code (128+n
// when killed by signal n). Cancelling ctx kills the command's process
// group in the guest; Exec then returns the exit code and ctx's error. An
// error with code -1 means the command could not be started or the agent
// was lost. Note: a stdin reader blocked in Read is abandoned, not closed,
// when the command ends.
func (c *Client) Exec(ctx context.Context, r ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(r.Argv) == 0 {
		return -1, errors.New("exec: empty argv")
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	onOut := func(stream int, data []byte) {
		if stream == 2 {
			_, _ = stderr.Write(data)
		} else {
			_, _ = stdout.Write(data)
		}
	}
	r.Stdin = stdin != nil
	m := &Msg{T: TExec, Exec: &r}
	if r.TTY && r.Resize != nil {
		m.onSent = func(cc *conn, id uint64, done <-chan struct{}) {
			go forwardResizes(ctx, cc, id, r.Resize, done)
		}
	}
	var res *Msg
	var err error
	if stdin != nil {
		res, err = c.doInput(ctx, m, stdin, onOut)
	} else {
		res, err = c.do(ctx, m, onOut)
	}
	if res == nil {
		return -1, fmt.Errorf("exec %s: %w", r.Argv[0], err)
	}
	if res.Err != "" {
		return -1, fmt.Errorf("exec %s: %w", r.Argv[0], &RemoteError{Op: TExec, Msg: res.Err})
	}
	return res.Code, err
}

// StartBackground starts r detached (its own session) in the guest, with
// stdin /dev/null and stdout+stderr appended to logPath (created with its
// parents; owned by the user). The process outlives the request and any
// disconnect. It fails if the process exits non-zero within grace; the
// error then contains the end of its log.
func (c *Client) StartBackground(ctx context.Context, r ExecRequest, logPath string, grace time.Duration) error {
	if len(r.Argv) == 0 {
		return errors.New("start background: empty argv")
	}
	r.Stdin, r.TTY = false, false
	res, err := c.do(ctx, &Msg{T: TBg, Exec: &r, Path: logPath, N: grace.Milliseconds()}, nil)
	if err != nil {
		return fmt.Errorf("start background %s: %w", r.Argv[0], err)
	}
	if err := remoteErr(TBg, res); err != nil {
		return fmt.Errorf("start background %s: %w", r.Argv[0], err)
	}
	return nil
}

// CopyIn extracts the tar stream below dir (absolute) in the guest.
// Regular files, directories, symlinks and hard links are supported, with
// modes, owners (Uname/Gname when they exist in the guest, else Uid/Gid)
// and mtimes. Parents are created. An existing regular file is overwritten
// in place (same inode). An entry carrying the PAX record DeletePAXKey=1
// (see DeleteHeader) deletes its path. Directory mtimes are applied after
// all entries.
func (c *Client) CopyIn(ctx context.Context, dir string, tar io.Reader) error {
	res, err := c.doInput(ctx, &Msg{T: TCopyIn, Path: dir}, tar, nil)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", dir, err)
	}
	if err := remoteErr(TCopyIn, res); err != nil {
		return fmt.Errorf("copy into %s: %w", dir, err)
	}
	return nil
}

// WriteFile writes data to path in the guest (in place when the file
// exists, creating parents), then sets its mode to perm. Owner: root for a
// new file, unchanged for an existing one.
func (c *Client) WriteFile(ctx context.Context, path string, data []byte, perm os.FileMode) error {
	res, err := c.doInput(ctx, &Msg{T: TWrite, Path: path, Mode: uint32(perm.Perm())},
		bytesReader(data), nil)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := remoteErr(TWrite, res); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadFile returns the contents of a (small) file in the guest.
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var out []byte
	res, err := c.do(ctx, &Msg{T: TRead, Path: path}, func(_ int, d []byte) { out = append(out, d...) })
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if err := remoteErr(TRead, res); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// SetClock sets the guest's wall clock (settimeofday).
func (c *Client) SetClock(ctx context.Context, now time.Time) error {
	res, err := c.do(ctx, &Msg{T: TClock, N: now.UnixNano()}, nil)
	if err != nil {
		return fmt.Errorf("set guest clock: %w", err)
	}
	if err := remoteErr(TClock, res); err != nil {
		return fmt.Errorf("set guest clock: %w", err)
	}
	return nil
}

// AddEntropy mixes seed into the guest's random pool, credits it
// (RNDADDENTROPY) and forces a reseed of the CRNG (RNDRESEEDCRNG) so that
// two VMs restored from the same snapshot diverge.
func (c *Client) AddEntropy(ctx context.Context, seed []byte) error {
	if len(seed) == 0 || len(seed) > ChunkSize {
		return fmt.Errorf("add entropy: seed of %d bytes (want 1..%d)", len(seed), ChunkSize)
	}
	res, err := c.do(ctx, &Msg{T: TEntropy, Data: seed}, nil)
	if err != nil {
		return fmt.Errorf("add guest entropy: %w", err)
	}
	if err := remoteErr(TEntropy, res); err != nil {
		return fmt.Errorf("add guest entropy: %w", err)
	}
	return nil
}

// forwardResizes sends window size changes until done.
func forwardResizes(ctx context.Context, cc *conn, id uint64, sizes <-chan WindowSize, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-cc.done:
			return
		case ws, ok := <-sizes:
			if !ok {
				return
			}
			if cc.send(ctx, &Msg{T: TResize, ID: id, Rows: ws.Rows, Cols: ws.Cols}) != nil {
				return
			}
		}
	}
}

type byteReader struct{ b []byte }

func bytesReader(b []byte) io.Reader { return &byteReader{b: b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
