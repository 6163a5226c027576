package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/agentproto"
)

// defaultPath is used to find commands (and put in the environment) when
// the request's environment has no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// drainIdle is how long output pipes are still read after the command
// exited while no more data arrives (children that inherited the pipes
// may keep them open forever); drainMax bounds the total.
const (
	drainIdle = 200 * time.Millisecond
	drainMax  = 5 * time.Second
)

// identity is a resolved target user.
type identity struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
	home   string
}

// lookupUser resolves a user name or numeric uid ("" = root) through
// /etc/passwd and /etc/group.
func lookupUser(name string) (*identity, error) {
	if name == "" {
		name = "root"
	}
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		if name == "root" {
			return &identity{name: "root", home: "/root"}, nil
		}
		return nil, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	id := &identity{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	gids, err := u.GroupIds()
	if err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				id.groups = append(id.groups, uint32(n))
			}
		}
	}
	if len(id.groups) == 0 {
		id.groups = []uint32{id.gid}
	}
	return id, nil
}

// envGet returns the value of key in env (last one wins).
func envGet(env []string, key string) (string, bool) {
	val, ok := "", false
	for _, kv := range env {
		if k, v, found := strings.Cut(kv, "="); found && k == key {
			val, ok = v, true
		}
	}
	return val, ok
}

// lookPath finds file in the colon-separated path, like a shell.
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", file, exec.ErrNotFound)
}

// prepared is a command ready to start.
type prepared struct {
	cmd *exec.Cmd
	id  *identity
}

// prepare resolves user, environment, directory and program of e.
func prepare(e *agentproto.ExecRequest) (*prepared, error) {
	if e == nil || len(e.Argv) == 0 {
		return nil, errors.New("empty argv")
	}
	id, err := lookupUser(e.User)
	if err != nil {
		return nil, err
	}
	env := append([]string(nil), e.Env...)
	for _, kv := range [][2]string{{"HOME", id.home}, {"USER", id.name}, {"LOGNAME", id.name}, {"PATH", defaultPath}} {
		if _, ok := envGet(env, kv[0]); !ok {
			env = append(env, kv[0]+"="+kv[1])
		}
	}
	path, _ := envGet(env, "PATH")
	prog, err := lookPath(e.Argv[0], path)
	if err != nil {
		return nil, err
	}
	dir := e.Dir
	if dir == "" {
		dir = id.home
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			dir = "/"
		}
	}
	cmd := &exec.Cmd{Path: prog, Args: e.Argv, Env: env, Dir: dir,
		SysProcAttr: &syscall.SysProcAttr{}}
	if id.uid != 0 || id.gid != 0 || len(id.groups) > 1 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups}
	}
	return &prepared{cmd: cmd, id: id}, nil
}

// exitCode converts a wait status: 128+signal when killed by a signal.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// runExec runs a foreground command for r. The returned error means the
// command could not run at all.
func (s *server) runExec(r *request, e *agentproto.ExecRequest) (int, error) {
	p, err := prepare(e)
	if err != nil {
		return -1, err
	}
	cmd := p.cmd
	var closeAfterStart []*os.File
	defer func() {
		for _, f := range closeAfterStart {
			_ = f.Close()
		}
	}()

	// Standard input goes to stdinW: a pipe, the pty master, or nowhere
	// (the command then reads /dev/null).
	var stdinW io.Writer
	closeStdin := func() {}
	var outs []*os.File // read ends to pump: stream 1, then 2
	if e.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return -1, err
		}
		defer func() { _ = master.Close() }()
		closeAfterStart = append(closeAfterStart, slave)
		if e.Rows > 0 && e.Cols > 0 {
			_ = setWinsize(master, e.Rows, e.Cols)
		}
		if p.id.uid != 0 {
			_ = slave.Chown(int(p.id.uid), -1)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		outs = []*os.File{master}
		if e.Stdin {
			stdinW = master
		}
		r.setResize(func(rows, cols int) { _ = setWinsize(master, rows, cols) })
	} else {
		if e.Stdin {
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, fmt.Errorf("stdin pipe: %w", err)
			}
			closeAfterStart = append(closeAfterStart, pr)
			cmd.Stdin = pr
			stdinW = pw
			closeStdin = func() { _ = pw.Close() }
			defer closeStdin()
		} else {
			devnull, err := os.Open(os.DevNull)
			if err != nil {
				return -1, fmt.Errorf("open %s: %w", os.DevNull, err)
			}
			closeAfterStart = append(closeAfterStart, devnull)
			cmd.Stdin = devnull
		}
		for i := 0; i < 2; i++ {
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, fmt.Errorf("output pipe: %w", err)
			}
			defer func() { _ = pr.Close() }()
			closeAfterStart = append(closeAfterStart, pw)
			outs = append(outs, pr)
			if i == 0 {
				cmd.Stdout = pw
			} else {
				cmd.Stderr = pw
			}
		}
		cmd.SysProcAttr.Setpgid = true
	}

	status, err := s.reaper.start(cmd)
	if err != nil {
		return -1, fmt.Errorf("start %s: %w", e.Argv[0], err)
	}
	pid := cmd.Process.Pid
	for _, f := range closeAfterStart {
		_ = f.Close()
	}
	closeAfterStart = nil
	kill := func() { _ = unix.Kill(-pid, unix.SIGKILL) }
	r.setKill(kill)

	if stdinW != nil {
		go func() {
			_, _ = io.Copy(stdinW, r.in)
			closeStdin()
		}()
	}

	var finished sync.WaitGroup
	exited := make(chan struct{})
	for i, f := range outs {
		stream := i + 1
		finished.Add(1)
		go func() {
			defer finished.Done()
			pumpOutput(f, exited, func(b []byte) bool { return r.out(stream, b) })
		}()
	}

	var ws unix.WaitStatus
	select {
	case ws = <-status:
	case <-r.sess.ctx.Done():
		// The host went away: nobody will read the output.
		kill()
		ws = <-status
	}
	close(exited)
	finished.Wait()
	cmd.Process.Release()
	return exitCode(ws), nil
}

// pumpOutput forwards f's data in chunks until EOF. Once exited is closed
// it keeps forwarding only while data keeps coming (drainIdle, at most
// drainMax), then hands f to a goroutine that discards the rest, so
// processes that inherited the pipe do not get SIGPIPE.
func pumpOutput(f *os.File, exited <-chan struct{}, send func([]byte) bool) {
	var hard time.Time
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-exited:
			_ = f.SetReadDeadline(time.Now().Add(drainIdle))
		case <-stop:
		}
	}()
	buf := make([]byte, agentproto.ChunkSize)
	sending := true
	for {
		n, err := f.Read(buf)
		if n > 0 && sending {
			if !send(append([]byte(nil), buf[:n]...)) {
				sending = false
			}
		}
		select {
		case <-exited:
			if hard.IsZero() {
				hard = time.Now().Add(drainMax)
			}
			_ = f.SetReadDeadline(minTime(time.Now().Add(drainIdle), hard))
		default:
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			_ = f.SetReadDeadline(time.Time{})
			dup, derr := dupFile(f)
			if derr == nil {
				go func() {
					_, _ = io.Copy(io.Discard, dup)
					_ = dup.Close()
				}()
			}
			return
		}
		if err != nil {
			return // EOF, or EIO from a pty master whose slave closed
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// dupFile duplicates f's descriptor so the caller may close f.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(orig uintptr) { fd, derr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// startBackground starts e detached and watches it for grace.
func (s *server) startBackground(r *request, e *agentproto.ExecRequest, logPath string, grace time.Duration) error {
	p, err := prepare(e)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(logPath) {
		return fmt.Errorf("log path %q is not absolute", logPath)
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return fmt.Errorf("log directory: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer func() { _ = logf.Close() }()
	if st, err := logf.Stat(); err == nil && st.Size() == 0 && p.id.uid != 0 {
		_ = logf.Chown(int(p.id.uid), int(p.id.gid))
	}
	start, _ := logf.Seek(0, io.SeekEnd)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer func() { _ = devnull.Close() }()
	cmd := p.cmd
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr.Setsid = true
	status, err := s.reaper.start(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", e.Argv[0], err)
	}
	proc := cmd.Process
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case ws := <-status:
		proc.Release()
		if code := exitCode(ws); code != 0 {
			return fmt.Errorf("%s exited with code %d within %s%s", e.Argv[0], code, grace, logTail(logPath, start))
		}
		return nil
	case <-t.C:
	}
	// Still running: it is on its own now. The reaper collects it later.
	go func() {
		<-status
		proc.Release()
	}()
	return nil
}

// logTail returns the end of what was appended to the log after offset.
func logTail(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) <= offset {
		return ""
	}
	b = b[offset:]
	const max = 2048
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "; output: " + string(bytes.TrimSpace(b))
}

// openPTY opens a new pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	// Through SyscallConn: Fd() would switch the master to blocking mode,
	// and its reads need deadlines.
	var n int
	var ierr error
	rc, err := m.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
				ierr = fmt.Errorf("unlock pty: %w", ierr)
				return
			}
			if n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); ierr != nil {
				ierr = fmt.Errorf("pty number: %w", ierr)
			}
		})
	}
	if err == nil {
		err = ierr
	}
	if err != nil {
		_ = m.Close()
		return nil, nil, err
	}
	sl, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		_ = m.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	return m, sl, nil
}

// setWinsize sets the terminal size; safe to call concurrently with (or
// after) f.Close.
func setWinsize(f *os.File, rows, cols int) error {
	ws := &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	return ierr
}

// reaper collects exit statuses of all children (and, as PID 1 or a
// subreaper, of orphans) and hands them to whoever started the child.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
}

func newReaper() *reaper {
	return &reaper{waiters: map[int]chan unix.WaitStatus{}}
}

// start starts cmd and returns a channel that receives its wait status.
func (r *reaper) start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	resetOOMScore(cmd.Process.Pid)
	return ch, nil
}

// resetOOMScore gives a command the default OOM score adjustment. The agent
// itself may run protected (OOMScoreAdjust=-1000 in its systemd unit),
// which children would otherwise inherit, making the build's processes
// unkillable by the OOM killer.
func resetOOMScore(pid int) {
	own, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil || strings.TrimSpace(string(own)) == "0" {
		return
	}
	_ = os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte("0"), 0)
}

// reapAll collects every exited child without blocking.
func (r *reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		r.mu.Lock()
		ch := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		}
	}
}

// loop reaps on every SIGCHLD (and once a second, in case a signal was
// coalesced away) until stop is closed.
func (r *reaper) loop(sigchld <-chan os.Signal, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-sigchld:
		case <-t.C:
		}
		r.reapAll()
	}
}
