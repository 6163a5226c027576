package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/agentproto"
)

// virtPort imitates a virtio-serial port: the agent keeps one Port for
// its whole life; hosts come and go. Reads return EOF while no host is
// connected; writes block until a host is connected (and a write cut by a
// disconnect continues on the next host, as bytes queued in a virtqueue
// would).
type virtPort struct {
	mu      sync.Mutex
	cond    *sync.Cond
	cur     net.Conn // agent end of the current host connection
	garbage bool     // prepend junk to agent writes
	rnd     *rand.Rand
}

func newVirtPort() *virtPort {
	p := &virtPort{rnd: rand.New(rand.NewSource(1))}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// dial connects a new host, disconnecting the previous one.
func (p *virtPort) dial(ctx context.Context) (net.Conn, error) {
	host, agent := net.Pipe()
	p.mu.Lock()
	if p.cur != nil {
		_ = p.cur.Close()
	}
	p.cur = agent
	p.cond.Broadcast()
	p.mu.Unlock()
	return host, nil
}

// hangup disconnects the current host.
func (p *virtPort) hangup() {
	p.mu.Lock()
	if p.cur != nil {
		_ = p.cur.Close()
		p.cur = nil
	}
	p.mu.Unlock()
}

func (p *virtPort) Read(b []byte) (int, error) {
	p.mu.Lock()
	c := p.cur
	p.mu.Unlock()
	if c == nil {
		return 0, io.EOF
	}
	n, err := c.Read(b)
	if err != nil {
		p.mu.Lock()
		if p.cur == c {
			p.cur = nil
		}
		p.mu.Unlock()
		return n, io.EOF
	}
	return n, nil
}

func (p *virtPort) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		p.mu.Lock()
		for p.cur == nil {
			p.cond.Wait()
		}
		c := p.cur
		junk := p.garbage
		var j []byte
		if junk {
			j = make([]byte, p.rnd.Intn(40))
			p.rnd.Read(j)
		}
		p.mu.Unlock()
		if len(j) > 0 {
			if _, err := c.Write(j); err != nil {
				continue
			}
		}
		n, err := c.Write(b[written:])
		written += n
		if err != nil {
			p.mu.Lock()
			for p.cur == c {
				p.cond.Wait() // blocked until another host connects
			}
			p.mu.Unlock()
		}
	}
	return written, nil
}

func (p *virtPort) Close() error { return nil }

// garbleConn prepends random junk to every host write.
type garbleConn struct {
	net.Conn
	mu  sync.Mutex
	rnd *rand.Rand
}

func (g *garbleConn) Write(b []byte) (int, error) {
	g.mu.Lock()
	j := make([]byte, g.rnd.Intn(50))
	g.rnd.Read(j)
	g.mu.Unlock()
	if _, err := g.Conn.Write(j); err != nil {
		return 0, err
	}
	return g.Conn.Write(b)
}

type harness struct {
	port      *virtPort
	client    *agentproto.Client
	garble    bool
	reaper    *reaper
	stopAgent context.CancelFunc
}

// runServer runs an agent server on port until the returned func is called.
func runServer(ctx context.Context, port *virtPort, r *reaper) context.CancelFunc {
	ctx, cancel := context.WithCancel(ctx)
	var logbuf bytes.Buffer
	srv := newServer(func(context.Context) (Port, bool, error) { return port, true, nil }, r,
		log.New(&logbuf, "", 0))
	go func() { _ = srv.serve(ctx) }()
	return cancel
}

// start runs the real agent server on a virtPort in this process.
func start(t *testing.T) *harness { return startB(t) }

func startB(t testing.TB) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := newReaper()
	sigchld := make(chan os.Signal, 16)
	signal.Notify(sigchld, unix.SIGCHLD)
	stop := make(chan struct{})
	go r.loop(sigchld, stop)
	h := &harness{port: newVirtPort(), reaper: r}
	h.stopAgent = runServer(ctx, h.port, r)
	h.client = agentproto.NewClient(func(ctx context.Context) (net.Conn, error) {
		c, err := h.port.dial(ctx)
		if err == nil && h.garble {
			c = &garbleConn{Conn: c, rnd: rand.New(rand.NewSource(2))}
		}
		return c, err
	})
	t.Cleanup(func() {
		_ = h.client.Close()
		cancel()
		h.port.hangup()
		signal.Stop(sigchld)
		close(stop)
	})
	return h
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sh(script string) agentproto.ExecRequest {
	return agentproto.ExecRequest{Argv: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}}
}

func TestHandshakeInfo(t *testing.T) {
	h := start(t)
	info, err := h.client.Handshake(tctx(t))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if info.Hostname != host || info.BootID == "" || info.Uptime <= 0 || info.AgentVersion == "" {
		t.Fatalf("info = %+v", info)
	}
}

func TestExecEchoAndExitCode(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	var out, errb bytes.Buffer
	code, err := h.client.Exec(ctx, sh("echo hello; echo oops >&2; exit 7"), nil, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if code != 7 || out.String() != "hello\n" || errb.String() != "oops\n" {
		t.Fatalf("code %d stdout %q stderr %q", code, out.String(), errb.String())
	}
	code, err = h.client.Exec(ctx, agentproto.ExecRequest{Argv: []string{"true"}}, nil, nil, nil)
	if err != nil || code != 0 {
		t.Fatalf("true: code %d err %v", code, err)
	}
	_, err = h.client.Exec(ctx, agentproto.ExecRequest{Argv: []string{"no-such-command-xyz"}}, nil, nil, nil)
	var re *agentproto.RemoteError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing command: err = %v", err)
	}
	// Killed by a signal: 128+n.
	code, err = h.client.Exec(ctx, sh("kill -TERM $$"), nil, nil, nil)
	if err != nil || code != 128+int(syscall.SIGTERM) {
		t.Fatalf("signalled: code %d err %v", code, err)
	}
}

func TestExecEnvUserDir(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	var out bytes.Buffer
	r := sh(`echo "$FOO|$HOME|$USER|$(pwd)|$(id -u):$(id -g)"`)
	r.Env = append(r.Env, "FOO=bar baz")
	r.Dir = "/tmp"
	if code, err := h.client.Exec(ctx, r, nil, &out, nil); err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if got, want := out.String(), "bar baz|/root|root|/tmp|0:0\n"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	// Another user, default directory = home (nobody's home is missing: /).
	out.Reset()
	r = sh(`echo "$USER|$LOGNAME|$(id -u)|$(id -G)|$(pwd)"`)
	r.User = "nobody"
	if code, err := h.client.Exec(ctx, r, nil, &out, nil); err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if got := out.String(); got != "nobody|nobody|65534|65534|/\n" {
		t.Fatalf("as nobody: %q", got)
	}
	// Env is complete: variables of the agent do not leak.
	out.Reset()
	t.Setenv("STRATA_AGENT_LEAK", "1")
	if _, err := h.client.Exec(ctx, sh(`echo "[$STRATA_AGENT_LEAK]"`), nil, &out, nil); err != nil {
		t.Fatal(err)
	}
	if out.String() != "[]\n" {
		t.Fatalf("leaked env: %q", out.String())
	}
	// Unknown user.
	r.User = "no-such-user-xyz"
	if _, err := h.client.Exec(ctx, r, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "no-such-user-xyz") {
		t.Fatalf("unknown user: %v", err)
	}
}

func TestExecStdin(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	in := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB > window
	var out bytes.Buffer
	code, err := h.client.Exec(ctx, sh("sha256sum"), bytes.NewReader(in), &out, nil)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if want := fmt.Sprintf("%x  -\n", sha256.Sum256(in)); out.String() != want {
		t.Fatalf("out %q want %q", out.String(), want)
	}
}

// writerFunc adapts a function to io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestExecStreamsOutput(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	first := make(chan time.Time, 1)
	startT := time.Now()
	var mu sync.Mutex
	var all bytes.Buffer
	w := writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if all.Len() == 0 {
			first <- time.Now()
		}
		return all.Write(b)
	})
	code, err := h.client.Exec(ctx, sh("echo one; sleep 1; echo two"), nil, w, nil)
	end := time.Now()
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	f := <-first
	if f.Sub(startT) > end.Sub(startT)-500*time.Millisecond {
		t.Fatalf("first output arrived at %v, command ended at %v: not streamed", f.Sub(startT), end.Sub(startT))
	}
	if all.String() != "one\ntwo\n" {
		t.Fatalf("output %q", all.String())
	}
	// Large output arrives complete.
	var big countWriter
	code, err = h.client.Exec(ctx, sh("head -c 5000000 /dev/zero"), nil, &big, nil)
	if err != nil || code != 0 || big.n != 5000000 {
		t.Fatalf("big: code %d err %v n %d", code, err, big.n)
	}
}

type countWriter struct{ n int }

func (c *countWriter) Write(b []byte) (int, error) { c.n += len(b); return len(b), nil }

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie counts as dead.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func itoa(n int) string { return strconv.Itoa(n) }

func readPid(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			n := 0
			for _, c := range strings.TrimSpace(string(b)) {
				n = n*10 + int(c-'0')
			}
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no pid in %s", path)
	return 0
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !pidAlive(pid) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestExecCancelKillsProcessGroup(t *testing.T) {
	h := start(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(tctx(t))
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		// The child sleep is in the same process group as the shell.
		code, err := h.client.Exec(ctx, sh("sleep 300 & echo $! > "+dir+"/child; wait"), nil, nil, nil)
		res <- result{code, err}
	}()
	child := readPid(t, dir+"/child")
	cancel()
	r := <-res
	if !errors.Is(r.err, context.Canceled) || r.code != 128+9 {
		t.Fatalf("cancelled exec: code %d err %v", r.code, r.err)
	}
	if !waitGone(child, 5*time.Second) {
		t.Fatalf("child %d still running after cancel", child)
	}
	// The connection is still usable.
	if code, err := h.client.Exec(tctx(t), sh("exit 3"), nil, nil, nil); code != 3 || err != nil {
		t.Fatalf("after cancel: %d %v", code, err)
	}
}

func TestHostDisconnectKillsForegroundNotBackground(t *testing.T) {
	h := start(t)
	dir := t.TempDir()
	ctx := tctx(t)
	logPath := filepath.Join(dir, "logs", "bg.log")
	err := h.client.StartBackground(ctx, sh("echo $$ > "+dir+"/bg; echo started; exec sleep 300"), logPath, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	bg := readPid(t, dir+"/bg")
	t.Cleanup(func() { _ = unix.Kill(bg, unix.SIGKILL) })

	go func() {
		_, _ = h.client.Exec(ctx, sh("echo $$ > "+dir+"/fg; while :; do echo spam; sleep 0.01; done"), nil, io.Discard, nil)
	}()
	fg := readPid(t, dir+"/fg")
	h.port.hangup() // the host goes away mid-request
	if !waitGone(fg, 5*time.Second) {
		t.Fatalf("foreground %d survived host disconnect", fg)
	}
	if !pidAlive(bg) {
		t.Fatalf("background %d died with the host connection", bg)
	}
	// A new host (as after a restore) gets a working agent.
	info, err := h.client.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = info
	var out bytes.Buffer
	if code, err := h.client.Exec(ctx, sh("cat "+logPath), nil, &out, nil); err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if out.String() != "started\n" {
		t.Fatalf("bg log %q", out.String())
	}
	if !pidAlive(bg) {
		t.Fatal("background process died after reconnect")
	}
}

func TestBackgroundFailsWithinGrace(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	logPath := filepath.Join(t.TempDir(), "bg.log")
	err := h.client.StartBackground(ctx, sh("echo cannot bind >&2; exit 4"), logPath, 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "code 4") || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("err = %v", err)
	}
	// Exit 0 within grace is fine.
	if err := h.client.StartBackground(ctx, sh("true"), logPath, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestGarbageAndStaleFramesResync(t *testing.T) {
	h := start(t)
	h.garble = true
	h.port.garbage = true
	ctx := tctx(t)
	for i := 0; i < 3; i++ {
		var out bytes.Buffer
		code, err := h.client.Exec(ctx, sh("head -c 300000 /dev/zero | tr '\\0' x; exit 5"), strings.NewReader("ignored"), &out, nil)
		if err != nil || code != 5 || out.Len() != 300000 {
			t.Fatalf("round %d: code %d err %v len %d", i, code, err, out.Len())
		}
	}
	h.port.garbage = false
	h.garble = false

	// A host that goes away in the middle of big output: the agent's
	// writer is blocked mid-frame; the new host must still get a clean
	// session (the rest of the old frame arrives first and is skipped).
	ctx2, cancel := context.WithCancel(ctx)
	started := make(chan struct{})
	go func() {
		w := writerFunc(func(b []byte) (int, error) {
			select {
			case <-started:
			default:
				close(started)
			}
			time.Sleep(time.Hour) // a host that stops reading
			return len(b), nil
		})
		_, _ = h.client.Exec(ctx2, sh("head -c 10000000 /dev/zero"), nil, w, nil)
	}()
	<-started
	cancel()
	for i := 0; i < 2; i++ {
		if _, err := h.client.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if code, err := h.client.Exec(ctx, sh("echo fresh"), nil, &out, nil); err != nil || code != 0 || out.String() != "fresh\n" {
			t.Fatalf("after reconnect: code %d err %v out %q", code, err, out.String())
		}
	}
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

func mkTar(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.body))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func TestCopyInRoundTrip(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	dest := filepath.Join(t.TempDir(), "app")
	mt := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	dirMt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	big := strings.Repeat("B", 3<<20)
	err := h.client.CopyIn(ctx, dest, mkTar(t,
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "src/", Mode: 0o750, ModTime: dirMt}},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "src/main.go", Mode: 0o640, ModTime: mt, Uid: 65534, Gid: 65534}, body: "package main\n"},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/run.sh", Mode: 0o755, ModTime: mt, Uname: "nobody"}, body: "#!/bin/sh\n"},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, ModTime: mt}, body: big},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "src/main.go", ModTime: mt}},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hard", Linkname: "src/main.go"}},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "old.txt", Mode: 0o644, ModTime: mt}, body: "old"},
	))
	if err != nil {
		t.Fatal(err)
	}
	st := stat(t, dest+"/src/main.go")
	if st.Mode&0o7777 != 0o640 || st.Uid != 65534 || st.Gid != 65534 || st.Mtim.Sec != mt.Unix() || st.Nlink != 2 {
		t.Fatalf("main.go: mode %o uid %d gid %d mtime %d nlink %d", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec, st.Nlink)
	}
	if b, _ := os.ReadFile(dest + "/src/main.go"); string(b) != "package main\n" {
		t.Fatalf("main.go content %q", b)
	}
	if s := stat(t, dest+"/bin/run.sh"); s.Uid != 65534 || s.Mode&0o7777 != 0o755 {
		t.Fatalf("run.sh uid %d mode %o", s.Uid, s.Mode&0o7777)
	}
	if b, _ := os.ReadFile(dest + "/big"); len(b) != len(big) {
		t.Fatalf("big: %d bytes", len(b))
	}
	if l, _ := os.Readlink(dest + "/link"); l != "src/main.go" {
		t.Fatalf("link -> %q", l)
	}
	if s := stat(t, dest+"/src"); s.Mode&0o7777 != 0o750 || s.Mtim.Sec != dirMt.Unix() {
		t.Fatalf("src dir mode %o mtime %d", s.Mode&0o7777, s.Mtim.Sec)
	}

	// Overwrite in place (same inode, an open reader sees the new
	// content) and delete.
	ino := stat(t, dest+"/src/main.go").Ino
	f, err := os.Open(dest + "/src/main.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mt2 := mt.Add(time.Hour)
	err = h.client.CopyIn(ctx, dest, mkTar(t,
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "src/main.go", Mode: 0o644, ModTime: mt2}, body: "package changed\n"},
		tarEntry{hdr: *agentproto.DeleteHeader("old.txt")},
		tarEntry{hdr: *agentproto.DeleteHeader("bin")},
		tarEntry{hdr: *agentproto.DeleteHeader("never-existed")},
	))
	if err != nil {
		t.Fatal(err)
	}
	st = stat(t, dest+"/src/main.go")
	if st.Ino != ino || st.Mtim.Sec != mt2.Unix() || st.Mode&0o7777 != 0o644 {
		t.Fatalf("overwrite: inode %d->%d mtime %d mode %o", ino, st.Ino, st.Mtim.Sec, st.Mode&0o7777)
	}
	if b, _ := io.ReadAll(f); string(b) != "package changed\n" {
		t.Fatalf("open reader sees %q", b)
	}
	for _, gone := range []string{"old.txt", "bin"} {
		if _, err := os.Lstat(dest + "/" + gone); !os.IsNotExist(err) {
			t.Fatalf("%s not deleted: %v", gone, err)
		}
	}
	// A broken stream is reported, and the connection still works.
	err = h.client.CopyIn(ctx, dest, strings.NewReader("this is not a tar stream, definitely not one at all"+strings.Repeat("x", 600)))
	if err == nil || !strings.Contains(err.Error(), "tar") {
		t.Fatalf("bad tar: %v", err)
	}
	if code, err := h.client.Exec(ctx, sh("exit 0"), nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("after bad tar: %d %v", code, err)
	}
}

func stat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func TestWriteReadFile(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	p := filepath.Join(t.TempDir(), "a", "b", "f.txt")
	if err := h.client.WriteFile(ctx, p, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := h.client.ReadFile(ctx, p)
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q %v", got, err)
	}
	if s := stat(t, p); s.Mode&0o777 != 0o600 {
		t.Fatalf("mode %o", s.Mode&0o777)
	}
	if _, err := h.client.ReadFile(ctx, p+".missing"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing: %v", err)
	}
}

func TestEntropyAndClock(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for RNDADDENTROPY")
	}
	h := start(t)
	ctx := tctx(t)
	if err := h.client.AddEntropy(ctx, bytes.Repeat([]byte{7}, 64)); err != nil {
		t.Fatal(err)
	}
	// Setting the clock to now (not changing it) exercises settimeofday.
	if err := h.client.SetClock(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(time.Now()); d > time.Second {
		t.Fatal("clock moved")
	}
}

func TestTTY(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	var out bytes.Buffer
	r := sh("tty >/dev/null && echo is-a-tty; stty size")
	r.TTY, r.Rows, r.Cols = true, 33, 120
	code, err := h.client.Exec(ctx, r, nil, &out, nil)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
	if got := strings.ReplaceAll(out.String(), "\r", ""); got != "is-a-tty\n33 120\n" {
		t.Fatalf("tty output %q", got)
	}

	// Keystrokes go to the terminal; the window can be resized.
	out.Reset()
	sizes := make(chan agentproto.WindowSize, 1)
	sizes <- agentproto.WindowSize{Rows: 40, Cols: 100}
	r = sh("read line; echo \"got $line\"; sleep 0.3; stty size")
	r.TTY, r.Rows, r.Cols, r.Resize = true, 24, 80, sizes
	code, err = h.client.Exec(ctx, r, strings.NewReader("typed\n"), &out, nil)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
	// The terminal echoes the typed line.
	if got := strings.ReplaceAll(out.String(), "\r", ""); got != "typed\ngot typed\n40 100\n" {
		t.Fatalf("interactive tty output %q", got)
	}
}

func TestRedialAfterDisconnectWithoutHandshake(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	if code, err := h.client.Exec(ctx, sh("exit 1"), nil, nil, nil); code != 1 || err != nil {
		t.Fatalf("%d %v", code, err)
	}
	h.port.hangup()
	// The first call may see the dead connection; a later one redials.
	var code int
	var err error
	for i := 0; i < 2; i++ {
		code, err = h.client.Exec(ctx, sh("exit 2"), nil, nil, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, agentproto.ErrDisconnected) {
			t.Fatalf("unexpected error %v", err)
		}
	}
	if code != 2 || err != nil {
		t.Fatalf("after redial: %d %v", code, err)
	}
}

// A child that inherits the output pipes and outlives the command must not
// hold the request open (nor be killed by SIGPIPE).
func TestExecReturnsWhileChildHoldsOutput(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	dir := t.TempDir()
	for _, tty := range []bool{false, true} {
		var out bytes.Buffer
		r := sh("sleep 60 & echo $! > " + dir + "/child; echo done")
		r.TTY = tty
		t0 := time.Now()
		code, err := h.client.Exec(ctx, r, nil, &out, nil)
		if err != nil || code != 0 || strings.ReplaceAll(out.String(), "\r", "") != "done\n" {
			t.Fatalf("tty=%v: code %d err %v out %q", tty, code, err, out.String())
		}
		if d := time.Since(t0); d > 3*time.Second {
			t.Fatalf("tty=%v: exec took %v", tty, d)
		}
		child := readPid(t, dir+"/child")
		if !tty && !pidAlive(child) {
			t.Fatalf("lingering child %d was killed", child)
		}
		_ = unix.Kill(child, unix.SIGKILL)
		_ = os.Remove(dir + "/child")
	}
}

func TestChildrenDoNotInheritOOMProtection(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to lower oom_score_adj")
	}
	old, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Skip(err)
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-900"), 0); err != nil {
		t.Skip(err)
	}
	defer os.WriteFile("/proc/self/oom_score_adj", old, 0)
	h := start(t)
	var out bytes.Buffer
	code, err := h.client.Exec(tctx(t), sh("sleep 0.1; cat /proc/$$/oom_score_adj"), nil, &out, nil)
	if err != nil || code != 0 || out.String() != "0\n" {
		t.Fatalf("code %d err %v oom_score_adj %q", code, err, out.String())
	}
}

func BenchmarkExecRoundTrip(b *testing.B) {
	h := startB(b)
	ctx := context.Background()
	r := agentproto.ExecRequest{Argv: []string{"/bin/true"}}
	for b.Loop() {
		if code, err := h.client.Exec(ctx, r, nil, nil, nil); err != nil || code != 0 {
			b.Fatal(code, err)
		}
	}
}

func BenchmarkCopyIn(b *testing.B) {
	h := startB(b)
	ctx := context.Background()
	dir := b.TempDir()
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, Size: int64(len(body))})
	_, _ = tw.Write(body)
	_ = tw.Close()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := h.client.CopyIn(ctx, dir, bytes.NewReader(buf.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExecOutput(b *testing.B) {
	h := startB(b)
	ctx := context.Background()
	const n = 16 << 20
	b.SetBytes(n)
	for b.Loop() {
		var c countWriter
		if code, err := h.client.Exec(ctx, sh("head -c 16777216 /dev/zero"), nil, &c, nil); err != nil || code != 0 || c.n != n {
			b.Fatal(code, err, c.n)
		}
	}
}

func TestCopyInReplacesRunningExecutable(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	sleepBin, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	if err := os.WriteFile(prog, sleepBin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Run it through the agent so the agent's reaper collects it.
	if err := h.client.StartBackground(ctx, sh("echo $$ > "+dir+"/pid; exec "+prog+" 30"), dir+"/log", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	pid := readPid(t, dir+"/pid")
	defer unix.Kill(pid, unix.SIGKILL)
	err = h.client.CopyIn(ctx, dir, mkTar(t, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "prog", Mode: 0o755}, body: "#!/bin/sh\necho new\n"}))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(prog); string(b) != "#!/bin/sh\necho new\n" {
		t.Fatalf("content %q", b)
	}
	if m, _ := filepath.Glob(dir + "/.prog.strata-*"); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}

// When the agent process is replaced (crash, systemd restart) while the
// host waits for an answer, the new agent's announcement fails the pending
// call instead of leaving it hanging; the next call talks to the new agent.
func TestAgentRestartFailsPendingCalls(t *testing.T) {
	h := start(t)
	ctx := tctx(t)
	if _, err := h.client.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := h.client.Exec(ctx, sh("sleep 30"), nil, nil, nil)
		res <- err
	}()
	time.Sleep(300 * time.Millisecond)
	h.stopAgent()                                                   // the old agent process dies...
	h.stopAgent = runServer(context.Background(), h.port, h.reaper) // ...systemd starts a new one
	t.Cleanup(func() { h.stopAgent() })
	select {
	case err := <-res:
		if !errors.Is(err, agentproto.ErrDisconnected) || !strings.Contains(err.Error(), "restarted") {
			t.Fatalf("pending exec: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pending exec still waiting after the agent restarted")
	}
	var out bytes.Buffer
	if code, err := h.client.Exec(ctx, sh("echo new agent"), nil, &out, nil); err != nil || code != 0 || out.String() != "new agent\n" {
		t.Fatalf("after restart: %d %v %q", code, err, out.String())
	}
}
