package vm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
	"github.com/strata-ci/strata/internal/fsutil"
	"github.com/strata-ci/strata/internal/memstate"
)

// qemuMachine is one running QEMU process.
type qemuMachine struct {
	q       *QEMU
	cmd     *exec.Cmd
	runDir  string
	paths   launchPaths
	stderr  *tailBuffer
	exited  chan struct{}
	waitErr error
	accel   Accel

	started time.Time
	timings Timings
	// pendingSave is closed when the snapshot being saved in the
	// background is finished (nil when none is).
	pendingSave chan struct{}

	saveMu        sync.Mutex  // guards pendingSave and lastMigration; never waits on mu
	lastMigration migrateInfo // last completed migration (diagnostics)

	qmp       *qmpClient
	agent     *agentproto.Client
	stopWatch chan struct{}

	mu sync.Mutex // serialises Snapshot and Forward, guards below
	// lastState is the state this machine was restored from or last
	// saved: the next snapshot stores only the chunks it lacks.
	lastState *memstate.Manifest
	overlay   string
	node      string
	seq       int
	closed    bool
}

// Timings reports how long a Boot or Restore took, each measured from the
// start of the QEMU process (for benchmarks and diagnostics).
type Timings struct {
	MonitorReady time.Duration // QMP answered
	StateLoaded  time.Duration // incoming migration complete (Restore only)
	Handshake    time.Duration // guest agent answered
	AgentReady   time.Duration // clock and entropy refreshed (Restore); = Handshake after Boot
}

// MachineTimings returns the launch timings of a machine created by QEMU.
func MachineTimings(m Machine) (Timings, bool) {
	qm, ok := m.(*qemuMachine)
	if !ok {
		return Timings{}, false
	}
	return qm.timings, true
}

// MigrationStats is what QEMU reported for a machine's last completed
// snapshot (or, after Restore, the incoming load).
type MigrationStats struct {
	Downtime   time.Duration // QEMU's own count of the guest's downtime
	Setup      time.Duration // migration setup
	Total      time.Duration // whole migration
	RAMWritten int64         // RAM bytes in the stream (before compression)
}

// LastMigration returns QEMU's statistics for m's last completed
// migration (machines created by QEMU only).
func LastMigration(m Machine) (MigrationStats, bool) {
	qm, ok := m.(*qemuMachine)
	if !ok {
		return MigrationStats{}, false
	}
	qm.saveMu.Lock()
	mi := qm.lastMigration
	qm.saveMu.Unlock()
	st := MigrationStats{
		Downtime: time.Duration(mi.Downtime) * time.Millisecond,
		Setup:    time.Duration(mi.SetupTime) * time.Millisecond,
		Total:    time.Duration(mi.TotalTime) * time.Millisecond,
	}
	if mi.RAM != nil {
		st.RAMWritten = mi.RAM.Transferred
	}
	return st, mi.Status == "completed"
}

// ConsoleLog returns the serial console output of a machine created by
// QEMU (the last 64 KiB).
func ConsoleLog(m Machine) string {
	qm, ok := m.(*qemuMachine)
	if !ok {
		return ""
	}
	return tailFile(qm.paths.console, 64<<10)
}

// PID is the QEMU process id of a machine created by QEMU (0 otherwise).
func PID(m Machine) int {
	qm, ok := m.(*qemuMachine)
	if !ok || qm.cmd.Process == nil {
		return 0
	}
	return qm.cmd.Process.Pid
}

// untilExit derives a context that is cancelled when QEMU exits.
func (m *qemuMachine) untilExit(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-m.exited:
			cancel(errExited)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// failure builds an error for a failed launch step, with QEMU's stderr and
// the end of the serial console.
func (m *qemuMachine) failure(step string, err error) error {
	select {
	case <-m.exited:
		err = fmt.Errorf("%w: %v (%v)", ErrVMDied, err, m.waitErr)
	default:
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", step, err)
	if s := strings.TrimSpace(m.stderr.String()); s != "" {
		fmt.Fprintf(&b, "\nQEMU stderr:\n%s", s)
	}
	if s := strings.TrimSpace(tailFile(m.paths.console, 4<<10)); s != "" {
		fmt.Fprintf(&b, "\nserial console (end):\n%s", s)
	}
	return &wrapErr{msg: b.String(), err: err}
}

type wrapErr struct {
	msg string
	err error
}

func (e *wrapErr) Error() string { return e.msg }
func (e *wrapErr) Unwrap() error { return e.err }

// incoming loads a migration stream into a QEMU started with -incoming defer.
func (m *qemuMachine) incoming(ctx context.Context, uri string) error {
	if err := m.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return err
	}
	if err := m.waitMigration(ctx, 5*time.Millisecond); err != nil {
		return err
	}
	return m.qmp.Execute(ctx, "cont", nil, nil)
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	Downtime  int64  `json:"downtime"`
	TotalTime int64  `json:"total-time"`
	SetupTime int64  `json:"setup-time"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

// waitMigration polls query-migrate until the migration (outgoing or
// incoming) completes.
func (m *qemuMachine) waitMigration(ctx context.Context, every time.Duration) error {
	for {
		var mi migrateInfo
		if err := m.qmp.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			m.saveMu.Lock()
			m.lastMigration = mi
			m.saveMu.Unlock()
			return nil
		case "failed", "cancelled":
			if mi.ErrorDesc != "" {
				return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
			}
			return fmt.Errorf("migration %s", mi.Status)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(every):
		}
		if every < 20*time.Millisecond {
			every += every / 2
		}
	}
}

// connectAgent waits for the guest agent; after a restore it also sets the
// guest clock and adds fresh entropy.
func (m *qemuMachine) connectAgent(ctx context.Context, restored bool) error {
	path := m.paths.agent
	m.agent = agentproto.NewClient(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
	if _, err := m.agent.Handshake(ctx); err != nil {
		if c := context.Cause(ctx); errors.Is(c, errExited) {
			return c
		}
		return err
	}
	m.timings.Handshake = time.Since(m.started)
	if !restored {
		return nil
	}
	return m.refreshGuest(ctx)
}

// refreshGuest sets the guest clock from the host and reseeds its random
// pool, so restored copies neither live in the past nor share randomness.
func (m *qemuMachine) refreshGuest(ctx context.Context) error {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("entropy: %w", err)
	}
	// Both requests in flight at once: one round trip instead of two.
	errc := make(chan error, 1)
	go func() { errc <- m.agent.AddEntropy(ctx, seed) }()
	clockErr := m.agent.SetClock(ctx, time.Now())
	return errors.Join(clockErr, <-errc)
}

func (m *qemuMachine) execRequest(e Exec) agentproto.ExecRequest {
	return agentproto.ExecRequest{Argv: e.Argv, Env: e.Env, User: e.User, Dir: e.Dir, TTY: e.TTY}
}

// Run implements Machine.
func (m *qemuMachine) Run(ctx context.Context, e Exec, stdout, stderr io.Writer) (int, error) {
	ctx, cancel := m.untilExit(ctx)
	defer cancel()
	code, err := m.agent.Exec(ctx, m.execRequest(e), e.Stdin, stdout, stderr)
	return code, m.wrapDied(ctx, err)
}

// StartBackground implements Machine.
func (m *qemuMachine) StartBackground(ctx context.Context, e Exec, logPath string, grace time.Duration) error {
	ctx, cancel := m.untilExit(ctx)
	defer cancel()
	return m.wrapDied(ctx, m.agent.StartBackground(ctx, m.execRequest(e), logPath, grace))
}

// CopyIn implements Machine.
func (m *qemuMachine) CopyIn(ctx context.Context, dir string, tar io.Reader) error {
	ctx, cancel := m.untilExit(ctx)
	defer cancel()
	return m.wrapDied(ctx, m.agent.CopyIn(ctx, dir, tar))
}

// wrapDied marks err with ErrVMDied when QEMU exited meanwhile.
func (m *qemuMachine) wrapDied(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if m.qmp != nil {
		select {
		case <-m.qmp.Done():
			// The monitor went away: QEMU is exiting.
			select {
			case <-m.exited:
			case <-time.After(2 * time.Second):
			}
		default:
		}
	}
	select {
	case <-m.exited:
		return m.failure("QEMU exited", err)
	default:
	}
	if errors.Is(context.Cause(ctx), errExited) {
		return m.failure("QEMU exited", err)
	}
	return err
}

// Overlay implements Machine.
func (m *qemuMachine) Overlay() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.overlay
}

var hostfwdPortRE = regexp.MustCompile(`(?i)error|could not|invalid`)

// Forward implements Machine: HMP hostfwd_add bound to 127.0.0.1 on a free
// port chosen by the host kernel.
func (m *qemuMachine) Forward(ctx context.Context, guestPort int) (string, error) {
	if guestPort <= 0 || guestPort > 65535 {
		return "", fmt.Errorf("forward: bad guest port %d", guestPort)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return "", fmt.Errorf("forward %d: %w", guestPort, err)
		}
		out, err := m.qmp.HMP(ctx, fmt.Sprintf("hostfwd_add net0 tcp:127.0.0.1:%d-:%d", port, guestPort))
		if err != nil {
			return "", fmt.Errorf("forward %d: %w", guestPort, err)
		}
		if strings.TrimSpace(out) == "" || !hostfwdPortRE.MatchString(out) {
			return "127.0.0.1:" + strconv.Itoa(port), nil
		}
		// Port taken between our probe and QEMU's bind: try another.
	}
	return "", fmt.Errorf("forward %d: no free host port", guestPort)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// kill ends the QEMU process group.
func (m *qemuMachine) kill() {
	if m.cmd.Process != nil {
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		_ = m.cmd.Process.Kill()
	}
}

// Close implements Machine.
func (m *qemuMachine) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.agent != nil {
		m.agent.Close()
	}
	if m.qmp != nil {
		select {
		case <-m.exited:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = m.qmp.Execute(ctx, "quit", nil, nil)
			cancel()
		}
	}
	select {
	case <-m.exited:
	case <-time.After(3 * time.Second):
		m.kill()
		<-m.exited
	}
	if m.qmp != nil {
		m.qmp.Close()
	}
	close(m.stopWatch)
	os.RemoveAll(m.runDir)
	return nil
}

// Snapshot implements Machine. The guest is stopped only while the disk is
// switched to the new overlay and the device state is captured; RAM is
// saved in the background (background-snapshot: userfaultfd write
// protection copies a page before the guest changes it).
func (m *qemuMachine) Snapshot(ctx context.Context, statePath, nextOverlay string) (SnapshotResult, error) {
	finish, err := m.StartSnapshot(ctx, statePath, nextOverlay)
	if err != nil {
		return SnapshotResult{}, err
	}
	return finish(ctx)
}

// StartSnapshot implements Machine: it returns once the disk is switched
// and the guest runs again; RAM keeps streaming to the state file in the
// background until finish is called.
func (m *qemuMachine) StartSnapshot(ctx context.Context, statePath, nextOverlay string) (finish func(context.Context) (SnapshotResult, error), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var res SnapshotResult
	if m.closed {
		return nil, errors.New("snapshot: machine closed")
	}
	m.saveMu.Lock()
	pending := m.pendingSave != nil
	m.saveMu.Unlock()
	if pending {
		return nil, errors.New("snapshot: the previous snapshot is still being saved")
	}
	start := time.Now()
	startCtx, cancel := m.untilExit(ctx)
	defer cancel()
	ctx = startCtx
	fail := func(err error) (func(context.Context) (SnapshotResult, error), error) { return nil, err }

	absNext, err := filepath.Abs(nextOverlay)
	if err != nil {
		return fail(fmt.Errorf("snapshot: %w", err))
	}
	_, size, err := diskFormat(m.overlay)
	if err != nil {
		return fail(fmt.Errorf("snapshot: %w", err))
	}
	// Created before the pause: qemu-img create -u does not open the
	// (locked, in use) current overlay.
	if err := m.q.createOverlay(ctx, absNext, m.overlay, "qcow2", size, true); err != nil {
		return fail(fmt.Errorf("snapshot: %w", err))
	}
	// The saver reads a pipe whose write end QEMU gets over QMP: at the
	// pipe's end the stream is complete. It stores only the chunks the
	// state this machine was last restored from or saved to lacks.
	z, pw, err := startSaver(statePath, m.lastState)
	if err != nil {
		os.Remove(absNext)
		return fail(fmt.Errorf("snapshot: %w", err))
	}
	committed := false
	handedOff := false // finish owns the cleanup from here on
	m.seq++
	fdName := "state" + strconv.Itoa(m.seq)
	cleanup := func() {
		if !committed {
			// Unused by a migration, QEMU would keep the pipe open.
			cctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			_ = m.qmp.Execute(cctx, "closefd", map[string]any{"fdname": fdName}, nil)
			c()
			z.abort()
		}
	}
	defer func() {
		if !handedOff {
			cleanup()
		}
	}()
	err = m.qmp.SendFD(ctx, fdName, int(pw.Fd()))
	pw.Close() // QEMU holds its own copy now
	if err != nil {
		os.Remove(absNext)
		return fail(m.wrapDied(ctx, fmt.Errorf("snapshot: pass state pipe: %w", err)))
	}

	bg := !m.q.noBackgroundSnapshot
	if bg {
		if err := m.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{
			"capabilities": []map[string]any{{"capability": "background-snapshot", "state": true}},
		}, nil); err != nil {
			bg = false // e.g. no userfaultfd write protection: save paused
		}
	}

	// Opened while the guest runs; attached as the new top at the pause.
	node := "ov" + strconv.Itoa(m.seq)
	if err := m.qmp.Execute(ctx, "blockdev-add", map[string]any{
		"driver": "qcow2", "node-name": node, "discard": "unmap",
		"cache":   map[string]any{"no-flush": true},
		"file":    map[string]any{"driver": "file", "filename": absNext},
		"backing": nil,
	}, nil); err != nil {
		os.Remove(absNext)
		return fail(m.wrapDied(ctx, fmt.Errorf("snapshot: add overlay: %w", err)))
	}

	events, unsub := m.qmp.Subscribe()
	defer func() {
		if !handedOff {
			unsub()
		}
	}()

	// The pause: stop, switch the disk, start the migration, sent in one
	// write (QEMU runs them in order) so the guest waits for no round trip.
	pauseStart := time.Now()
	waitStop := m.qmp.Send("stop", nil)
	waitSwitch := m.qmp.Send("blockdev-snapshot", map[string]any{"node": m.node, "overlay": node})
	waitMigrate := m.qmp.Send("migrate", map[string]any{"uri": "fd:" + fdName})
	errStop := waitStop(ctx, nil)
	errSwitch := waitSwitch(ctx, nil)
	errMigrate := waitMigrate(ctx, nil)
	resumed := false
	resume := func() {
		if !resumed {
			rctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			_ = m.qmp.Execute(rctx, "cont", nil, nil)
			c()
			resumed = true
		}
	}
	defer func() {
		if !handedOff {
			resume()
		}
	}()
	if errStop != nil || errSwitch != nil {
		if errMigrate == nil {
			_ = m.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		}
		if errSwitch == nil {
			// The disk switched while the guest ran: the frozen layer
			// is consistent, the memory state would not be.
			m.overlay, m.node = absNext, node
		} else {
			_ = m.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
			os.Remove(absNext)
		}
		return fail(m.wrapDied(ctx, fmt.Errorf("snapshot: pause and switch disk: %w", errors.Join(errStop, errSwitch))))
	}
	frozen := m.overlay
	m.overlay, m.node = absNext, node

	if errMigrate != nil && bg {
		// Capability accepted but the migration refused: save paused.
		bg = false
		_ = m.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{
			"capabilities": []map[string]any{{"capability": "background-snapshot", "state": false}},
		}, nil)
		errMigrate = m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}, nil)
	}
	if errMigrate != nil {
		return fail(m.wrapDied(ctx, fmt.Errorf("snapshot: migrate: %w", errMigrate)))
	}

	var stopAt, resumeAt time.Time
	if bg {
		// QEMU 7.2 restarts the guest itself once devices are saved and
		// RAM is write-protected (a RESUME event); never cont before
		// that, or the guest could run before its devices are saved. A
		// later QEMU keeps the guest paused: we resume it when the state
		// is complete.
		stopAt, resumeAt = waitStopResume(ctx, events, 2*time.Second)
		if !resumeAt.IsZero() {
			resumed = true
			res.Pause = time.Since(pauseStart)
		} else if ctx.Err() != nil {
			return fail(m.wrapDied(ctx, fmt.Errorf("snapshot: %w", context.Cause(ctx))))
		}
	}
	handedOff = true
	saved := res
	done := make(chan struct{})
	m.saveMu.Lock()
	m.pendingSave = done
	m.saveMu.Unlock()
	finish = func(ctx context.Context) (res SnapshotResult, err error) {
		defer func() {
			unsub()
			resume()
			cleanup()
			// Not m.mu: finish also runs inside StartSnapshot, which
			// holds it.
			m.saveMu.Lock()
			m.pendingSave = nil
			m.saveMu.Unlock()
			close(done)
		}()
		ctx, cancel := m.untilExit(ctx)
		defer cancel()
		res = saved
		return m.finishSnapshot(ctx, finishArgs{
			bg: bg, resumed: &resumed, resume: resume, pauseStart: pauseStart,
			stopAt: stopAt, resumeAt: resumeAt, events: events, z: z,
			frozen: frozen, start: start, committed: &committed,
		}, res)
	}
	if !bg || !resumed {
		// Saved while paused (or the guest waits for the save to
		// resume): nothing to overlap; finish now.
		r, err := finish(ctx)
		if err != nil {
			return nil, err
		}
		return func(context.Context) (SnapshotResult, error) { return r, nil }, nil
	}
	return finish, nil
}

type finishArgs struct {
	bg               bool
	resumed          *bool
	resume           func()
	pauseStart       time.Time
	stopAt, resumeAt time.Time
	events           <-chan QMPEvent
	z                *stateSaver
	frozen           string
	start            time.Time
	committed        *bool
}

// finishSnapshot waits until the state is saved, then syncs and names it.
func (m *qemuMachine) finishSnapshot(ctx context.Context, a finishArgs, res SnapshotResult) (SnapshotResult, error) {
	stopAt, resumeAt := a.stopAt, a.resumeAt
	frozen, start := a.frozen, a.start
	z, events, pauseStart := a.z, a.events, a.pauseStart
	resumed, resume := *a.resumed, a.resume
	if err := m.waitMigration(ctx, 10*time.Millisecond); err != nil {
		if ctx.Err() != nil {
			_ = m.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		}
		return res, m.wrapDied(ctx, fmt.Errorf("snapshot: save state: %w", err))
	}
	if !resumed {
		resume()
		res.Pause = time.Since(pauseStart)
		stopAt, resumeAt = waitStopResume(ctx, events, time.Second)
	}
	// QEMU's own event timestamps bound the pause without our round trips.
	if !stopAt.IsZero() && !resumeAt.IsZero() && resumeAt.After(stopAt) {
		res.Pause = resumeAt.Sub(stopAt)
	}
	if err := z.wait(ctx); err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	if err := fsutil.SyncFile(frozen); err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	saved, stats, err := z.commit()
	if err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	*a.committed = true
	m.lastState = saved
	res.StateBytes = stats.NewBytes
	res.StateStreamBytes = stats.Size
	res.Total = time.Since(start)
	res.DiskBytes = diskUsage(frozen)
	return res, nil
}

// waitStopResume collects the STOP and RESUME events (QEMU timestamps)
// until RESUME arrives or timeout passes.
func waitStopResume(ctx context.Context, events <-chan QMPEvent, timeout time.Duration) (stop, resume time.Time) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			switch ev.Name {
			case "STOP":
				stop = ev.Time
			case "RESUME":
				resume = ev.Time
				if resume.IsZero() {
					resume = time.Now()
				}
				return
			}
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// diskUsage is the bytes a file occupies on disk (sparse files count less).
func diskUsage(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
