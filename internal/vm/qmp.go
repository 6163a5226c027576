package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// qmpClient speaks the QEMU Machine Protocol over a unix socket: the
// greeting, capability negotiation, commands matched to replies by id, and
// asynchronous events.
type qmpClient struct {
	conn net.Conn

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  int
	pending map[string]chan qmpReply
	subs    map[int]chan QMPEvent
	nextSub int
	closed  bool
	readErr error
	done    chan struct{}
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// QMPEvent is an asynchronous event sent by QEMU.
type QMPEvent struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

type qmpMessage struct {
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     json.RawMessage `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	QMP       json.RawMessage `json:"QMP"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// dialQMP connects to the QMP socket at path, retrying until it appears or
// ctx ends, reads the greeting and enters command mode.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var conn net.Conn
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return newQMPClient(ctx, conn)
}

func newQMPClient(ctx context.Context, conn net.Conn) (*qmpClient, error) {
	br := bufio.NewReaderSize(conn, 64<<10)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	var greet qmpMessage
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("bad qmp greeting %q", line)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c := &qmpClient{
		conn:    conn,
		pending: map[string]chan qmpReply{},
		subs:    map[int]chan QMPEvent{},
		done:    make(chan struct{}),
	}
	go c.readLoop(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *qmpClient) readLoop(br *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = br.ReadBytes('\n')
		if err != nil {
			break
		}
		var m qmpMessage
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		switch {
		case m.Event != "":
			ev := QMPEvent{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			c.mu.Lock()
			for _, ch := range c.subs {
				select {
				case ch <- ev:
				default: // a slow subscriber loses events rather than blocking QMP
				}
			}
			c.mu.Unlock()
		case m.ID != nil:
			var id string
			if json.Unmarshal(m.ID, &id) != nil {
				continue
			}
			var r qmpReply
			r.Return = m.Return
			if m.Error != nil {
				_ = json.Unmarshal(m.Error, &r.Error)
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch != nil {
				ch <- r
			}
		}
	}
	c.mu.Lock()
	c.readErr = err
	c.closed = true
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	for id, ch := range c.subs {
		close(ch)
		delete(c.subs, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// Execute runs a QMP command with args (nil for none) and decodes its
// return value into out (nil to ignore it).
func (c *qmpClient) Execute(ctx context.Context, cmd string, args any, out any) error {
	return c.execute(ctx, cmd, args, out, -1)
}

// SendFD passes the open file descriptor fd to QEMU under name (QMP getfd
// with SCM_RIGHTS); QEMU keeps its own copy.
func (c *qmpClient) SendFD(ctx context.Context, name string, fd int) error {
	return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, fd)
}

func (c *qmpClient) execute(ctx context.Context, cmd string, args any, out any, fd int) error {
	return c.send(cmd, args, fd)(ctx, out)
}

// qmpWait waits for the reply of a sent command.
type qmpWait func(ctx context.Context, out any) error

// Send writes a command without waiting for its reply: several commands
// sent in a row are executed by QEMU in order without a round trip each.
func (c *qmpClient) Send(cmd string, args any) qmpWait { return c.send(cmd, args, -1) }

func (c *qmpClient) send(cmd string, args any, fd int) qmpWait {
	fail := func(err error) qmpWait { return func(context.Context, any) error { return err } }
	c.mu.Lock()
	if c.closed {
		err := c.readErr
		c.mu.Unlock()
		return fail(fmt.Errorf("qmp %s: connection closed: %v", cmd, err))
	}
	c.nextID++
	id := "s" + strconv.Itoa(c.nextID)
	ch := make(chan qmpReply, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		c.forget(id)
		return fail(fmt.Errorf("qmp %s: encode: %w", cmd, err))
	}
	c.wmu.Lock()
	if fd >= 0 {
		uc, ok := c.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("passing a file descriptor needs a unix socket")
		} else {
			_, _, err = uc.WriteMsgUnix(append(b, '\n'), syscall.UnixRights(fd), nil)
		}
	} else {
		_, err = c.conn.Write(append(b, '\n'))
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fail(fmt.Errorf("qmp %s: write: %w", cmd, err))
	}
	return func(ctx context.Context, out any) error {
		select {
		case r, ok := <-ch:
			if !ok {
				return fmt.Errorf("qmp %s: connection closed before reply (QEMU exited?)", cmd)
			}
			if r.Error != nil {
				return &QMPError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
			}
			if out != nil && r.Return != nil {
				if err := json.Unmarshal(r.Return, out); err != nil {
					return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
				}
			}
			return nil
		case <-ctx.Done():
			c.forget(id)
			return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
		}
	}
}

func (c *qmpClient) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// HMP runs a human-monitor command through QMP and returns its output.
func (c *qmpClient) HMP(ctx context.Context, line string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": line}, &out)
	return out, err
}

// Subscribe returns a channel receiving every event from now on and a
// function that ends the subscription.
func (c *qmpClient) Subscribe() (<-chan QMPEvent, func()) {
	ch := make(chan QMPEvent, 64)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		close(ch)
		return ch, func() {}
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		if _, ok := c.subs[id]; ok {
			delete(c.subs, id)
			close(ch)
		}
		c.mu.Unlock()
	}
}

// Done is closed when the connection ends.
func (c *qmpClient) Done() <-chan struct{} { return c.done }

// Close closes the connection.
func (c *qmpClient) Close() error {
	err := c.conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
