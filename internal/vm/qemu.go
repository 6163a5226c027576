package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-ci/strata/internal/memstate"
)

// Accel is a QEMU accelerator.
type Accel string

// Accelerators.
const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// QEMUOptions configures the QEMU hypervisor. The zero value is usable.
type QEMUOptions struct {
	// Binary is the system emulator (default "qemu-system-x86_64" in PATH).
	Binary string
	// ImgBinary is qemu-img (default "qemu-img" in PATH).
	ImgBinary string
	// Accel forces an accelerator; "" detects it (see DetectAccel).
	Accel Accel
	// CacheDir holds the cached accelerator verdict (default
	// $XDG_CACHE_HOME/strata or ~/.cache/strata).
	CacheDir string
	// RunDir is where per-VM sockets and logs live (default os.TempDir();
	// keep it short: unix socket paths are limited to 107 bytes).
	RunDir string
	// Warn receives the one warning printed when falling back to TCG
	// (default os.Stderr).
	Warn io.Writer
	// BootTimeout bounds Boot and Restore until the agent answers
	// (default 5 minutes).
	BootTimeout time.Duration
}

// QEMU is the QEMU implementation of Hypervisor.
type QEMU struct {
	opts    QEMUOptions
	binary  string
	img     string
	version string // e.g. "7.2.22"

	mu          sync.Mutex
	accel       Accel
	accelReason string
	warned      bool              // the TCG warning was printed
	hashes      map[string]string // file identity -> content hash

	// noBackgroundSnapshot forces the paused-migration fallback (tests).
	noBackgroundSnapshot bool
}

var _ Hypervisor = (*QEMU)(nil)

var qemuVersionRE = regexp.MustCompile(`version (\d+\.\d+\.\d+)`)

// NewQEMU finds QEMU and returns a Hypervisor. The error wraps ErrNoQEMU
// when qemu-system-x86_64 or qemu-img is missing.
func NewQEMU(opts QEMUOptions) (*QEMU, error) {
	if opts.Binary == "" {
		opts.Binary = "qemu-system-x86_64"
	}
	if opts.ImgBinary == "" {
		opts.ImgBinary = "qemu-img"
	}
	if opts.RunDir == "" {
		opts.RunDir = os.TempDir()
	}
	if opts.Warn == nil {
		opts.Warn = os.Stderr
	}
	if opts.BootTimeout == 0 {
		opts.BootTimeout = 5 * time.Minute
	}
	if opts.CacheDir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			opts.CacheDir = filepath.Join(d, "strata")
		} else {
			opts.CacheDir = filepath.Join(os.TempDir(), "strata-cache")
		}
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("%w (%s: %v)", ErrNoQEMU, opts.Binary, err)
	}
	imgBin, err := exec.LookPath(opts.ImgBinary)
	if err != nil {
		return nil, fmt.Errorf("%w (%s: %v)", ErrNoQEMU, opts.ImgBinary, err)
	}
	out, err := exec.Command(bin, "-version").Output()
	if err != nil {
		return nil, fmt.Errorf("%w (%s -version: %v)", ErrNoQEMU, bin, err)
	}
	m := qemuVersionRE.FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("parse QEMU version from %q", out)
	}
	q := &QEMU{opts: opts, binary: bin, img: imgBin, version: string(m[1]), hashes: map[string]string{}}
	if opts.Accel != "" {
		q.accel = opts.Accel
		q.accelReason = "set by configuration"
	}
	return q, nil
}

// Version is the QEMU version, e.g. "7.2.22".
func (q *QEMU) Version() string { return q.version }

// Accel returns the accelerator machines use, detecting it (with kernel as
// the probe kernel) on first use, and why it was chosen.
func (q *QEMU) Accel(ctx context.Context, kernel string) (Accel, string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.accel != "" {
		return q.accel, q.accelReason
	}
	a, reason, err := detectAccel(ctx, q.binary, q.opts.CacheDir, kernel)
	if err != nil {
		// Not cached: try again next time, run on TCG now.
		a, reason = AccelTCG, err.Error()
	} else {
		q.accel, q.accelReason = a, reason
	}
	return a, reason
}

// warnTCG prints, once per QEMU and only when a VM actually starts, why
// it runs under TCG (a run that reuses every snapshot starts none).
func (q *QEMU) warnTCG(accel Accel, reason string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if accel != AccelTCG || q.warned || reason == "set by configuration" {
		return
	}
	q.warned = true
	fmt.Fprintf(q.opts.Warn, "strata: warning: KVM is not usable (%s); running VMs with TCG software emulation, which is roughly 5-20x slower for guest code\n", reason)
}

func (q *QEMU) accelFor(img Image) Accel {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, _ := q.Accel(ctx, img.Kernel)
	return a
}

// launchPaths are the per-process paths of one VM; they are not part of
// the machine fingerprint.
type launchPaths struct {
	overlay string
	qmp     string
	agent   string
	console string
	kernel  string
	initrd  string
}

// placeholderPaths stand in for paths when fingerprinting.
var placeholderPaths = launchPaths{
	overlay: "@overlay", qmp: "@qmp", agent: "@agent", console: "@console",
	kernel: "@kernel", initrd: "@initrd",
}

// diskNode is the node name of the disk attached at launch.
const diskNode = "disk0"

// AgentPortName is the virtio-serial port name the guest agent opens
// (/dev/virtio-ports/org.strata.agent0).
const AgentPortName = "org.strata.agent0"

func normSpec(spec Spec) Spec {
	if spec.MemoryMB <= 0 {
		spec.MemoryMB = 2048
	}
	if spec.CPUs <= 0 {
		spec.CPUs = 2
	}
	return spec
}

// deviceArgs is the QEMU command line except the binary, -sandbox and
// incoming migration flags.
func deviceArgs(img Image, spec Spec, accel Accel, p launchPaths) []string {
	spec = normSpec(spec)
	bd, _ := json.Marshal(map[string]any{
		"driver":    "qcow2",
		"node-name": diskNode,
		"discard":   "unmap",
		// Guest flushes are not forwarded to the host: the writable
		// overlay is scratch until a snapshot freezes it, and Snapshot
		// fsyncs the frozen layer itself. This keeps fsync-heavy guests
		// (dpkg) fast and the snapshot pause free of host fsyncs.
		"cache": map[string]any{"no-flush": true},
		"file":  map[string]any{"driver": "file", "filename": p.overlay},
	})
	accelArg := "tcg,thread=multi"
	cpu := "max"
	if accel == AccelKVM {
		accelArg = "kvm"
		cpu = "host"
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35",
		"-accel", accelArg,
		"-cpu", cpu,
		"-m", strconv.Itoa(spec.MemoryMB),
		"-smp", strconv.Itoa(spec.CPUs),
		"-kernel", p.kernel,
	}
	if img.Initrd != "" {
		args = append(args, "-initrd", p.initrd)
	}
	args = append(args,
		"-append", img.Cmdline,
		"-blockdev", string(bd),
		"-device", "virtio-blk-pci,drive="+diskNode+",id=vda",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent0,server=on,wait=off,path="+p.agent,
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name="+AgentPortName,
		"-netdev", "user,id=net0",
		"-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
		"-chardev", "file,id=con0,path="+p.console,
		"-serial", "chardev:con0",
		"-qmp", "unix:"+p.qmp+",server=on,wait=off",
	)
	return args
}

// stateFormat names how states are stored (package memstate): a snapshot
// saved in another format is refused as incompatible, a cache miss.
const stateFormat = "memstate1"

// MachineArgs implements Hypervisor: a fingerprint of the QEMU version, the
// accelerator, the device arguments and the kernel and initrd contents.
func (q *QEMU) MachineArgs(img Image, spec Spec) string {
	accel := q.accelFor(img)
	h := sha256.New()
	fmt.Fprintf(h, "qemu %s\naccel %s\nstate %s\n", q.version, accel, stateFormat)
	for _, a := range deviceArgs(img, spec, accel, placeholderPaths) {
		fmt.Fprintf(h, "%s\n", a)
	}
	fmt.Fprintf(h, "kernel %s\ninitrd %s\n", q.fileHash(img.Kernel), q.fileHash(img.Initrd))
	spec = normSpec(spec)
	return fmt.Sprintf("qemu-%s/%s/q35/m%d/c%d/%s", q.version, accel, spec.MemoryMB, spec.CPUs, hex.EncodeToString(h.Sum(nil))[:24])
}

// fileHash returns the sha256 of path's content, memoised by identity.
func (q *QEMU) fileHash(path string) string {
	if path == "" {
		return "none"
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "missing:" + path
	}
	key := fmt.Sprintf("%s|%d|%d", path, fi.Size(), fi.ModTime().UnixNano())
	q.mu.Lock()
	if h, ok := q.hashes[key]; ok {
		q.mu.Unlock()
		return h
	}
	q.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return "unreadable:" + path
	}
	defer f.Close()
	hh := sha256.New()
	if _, err := io.Copy(hh, f); err != nil {
		return "unreadable:" + path
	}
	sum := hex.EncodeToString(hh.Sum(nil))
	q.mu.Lock()
	q.hashes[key] = sum
	q.mu.Unlock()
	return sum
}

// Boot implements Hypervisor.
func (q *QEMU) Boot(ctx context.Context, img Image, overlay string, spec Spec) (Machine, error) {
	if err := checkImage(img); err != nil {
		return nil, err
	}
	backing, err := filepath.Abs(img.Disk)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	fmtName, size, err := diskFormat(backing)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	if err := q.createOverlay(ctx, overlay, backing, fmtName, size, false); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	m, err := q.launch(ctx, img, spec, overlay, "")
	if err != nil {
		os.Remove(overlay)
		return nil, fmt.Errorf("boot: %w", err)
	}
	return m, nil
}

// Restore implements Hypervisor.
func (q *QEMU) Restore(ctx context.Context, img Image, snap SnapshotFiles, overlay string, spec Spec) (Machine, error) {
	if err := checkImage(img); err != nil {
		return nil, err
	}
	if cur := q.MachineArgs(img, spec); snap.MachineArgs != cur {
		return nil, fmt.Errorf("restore %s: %w: snapshot taken with %q, this machine is %q", snap.State, ErrIncompatible, snap.MachineArgs, cur)
	}
	if _, err := os.Stat(snap.State); err != nil {
		return nil, fmt.Errorf("restore: state file: %w", err)
	}
	fmtName, size, err := diskFormat(snap.Disk)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := q.createOverlay(ctx, overlay, snap.Disk, fmtName, size, true); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	m, err := q.launch(ctx, img, spec, overlay, snap.State)
	if err != nil {
		os.Remove(overlay)
		return nil, fmt.Errorf("restore %s: %w", snap.State, err)
	}
	return m, nil
}

func checkImage(img Image) error {
	for _, f := range []struct{ what, path string }{{"disk", img.Disk}, {"kernel", img.Kernel}} {
		if f.path == "" {
			return fmt.Errorf("image has no %s", f.what)
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("image %s: %w", f.what, err)
		}
	}
	if img.Initrd != "" {
		if _, err := os.Stat(img.Initrd); err != nil {
			return fmt.Errorf("image initrd: %w", err)
		}
	}
	return nil
}

// diskFormat tells qcow2 from raw by the magic number and returns the
// virtual size.
func diskFormat(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("open disk: %w", err)
	}
	defer f.Close()
	var hdr [32]byte
	n, _ := io.ReadFull(f, hdr[:])
	if n >= 32 && bytes.Equal(hdr[:4], []byte("QFI\xfb")) {
		return "qcow2", int64(binary.BigEndian.Uint64(hdr[24:32])), nil
	}
	fi, err := f.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("stat disk: %w", err)
	}
	return "raw", fi.Size(), nil
}

// relBacking is backing as seen from the directory of overlay: relative
// when both are on the same tree, so a store can be moved as a whole.
func relBacking(overlay, backing string) string {
	ao, err1 := filepath.Abs(overlay)
	ab, err2 := filepath.Abs(backing)
	if err1 != nil || err2 != nil {
		return backing
	}
	r, err := filepath.Rel(filepath.Dir(ao), ab)
	if err != nil {
		return ab
	}
	return r
}

// createOverlay creates a qcow2 file at overlay whose backing file is
// backing (written relative to overlay's directory). It does not open the
// backing file, which may be locked by a running QEMU.
func (q *QEMU) createOverlay(ctx context.Context, overlay, backing, backingFmt string, size int64, relative bool) error {
	if err := os.MkdirAll(filepath.Dir(overlay), 0o755); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	ref, err := filepath.Abs(backing)
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	if relative {
		ref = relBacking(overlay, backing)
	}
	cmd := exec.CommandContext(ctx, q.img, "create", "-q", "-f", "qcow2", "-u",
		"-b", ref, "-F", backingFmt, overlay, strconv.FormatInt(size, 10))
	// qemu-img resolves a relative backing path from the overlay's directory.
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s: %v: %s", overlay, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// launch starts QEMU; with state != "" it loads that migration stream
// before starting the guest.
func (q *QEMU) launch(ctx context.Context, img Image, spec Spec, overlay, state string) (*qemuMachine, error) {
	accel, reason := q.Accel(ctx, img.Kernel)
	q.warnTCG(accel, reason)
	if err := os.MkdirAll(q.opts.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	runDir, err := os.MkdirTemp(q.opts.RunDir, "strata-vm-")
	if err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	absOverlay, err := filepath.Abs(overlay)
	if err != nil {
		return nil, err
	}
	p := launchPaths{
		overlay: absOverlay,
		qmp:     filepath.Join(runDir, "qmp.sock"),
		agent:   filepath.Join(runDir, "agent.sock"),
		console: filepath.Join(runDir, "console.log"),
		kernel:  img.Kernel,
		initrd:  img.Initrd,
	}
	args := []string{"-name", "strata," + "debug-threads=on"}
	args = append(args, deviceArgs(img, spec, accel, p)...)
	// State streams come and go through pipes we pass in: QEMU never
	// needs to spawn a process.
	args = append(args, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny")
	if state != "" {
		args = append(args, "-S", "-incoming", "defer")
	}
	cmd := exec.Command(q.binary, args...)
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	var dec *stateLoader
	var loaded *memstate.Manifest
	if state != "" {
		// QEMU reads the stream from fd 3, fed by our loader.
		d, man, pr, err := startLoader(state)
		if err != nil {
			os.RemoveAll(runDir)
			return nil, err
		}
		dec, loaded = d, man
		cmd.ExtraFiles = []*os.File{pr}
		defer pr.Close()
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(runDir)
		if dec != nil {
			dec.abort()
		}
		return nil, fmt.Errorf("start %s: %w", q.binary, err)
	}
	m := &qemuMachine{
		q: q, cmd: cmd, runDir: runDir, paths: p, overlay: absOverlay, node: diskNode,
		stderr: stderr, exited: make(chan struct{}), started: start, accel: accel,
		lastState: loaded,
	}
	go func() {
		m.waitErr = cmd.Wait()
		close(m.exited)
	}()
	// The machine lives as long as ctx (like exec.CommandContext).
	m.stopWatch = make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			m.kill()
		case <-m.stopWatch:
		case <-m.exited:
		}
	}()
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()

	bctx, cancel := context.WithTimeout(ctx, q.opts.BootTimeout)
	defer cancel()
	bctx, cancelDied := m.untilExit(bctx)
	defer cancelDied()
	qmp, err := dialQMP(bctx, p.qmp)
	if err != nil {
		return nil, m.failure("connect to QEMU monitor", err)
	}
	m.qmp = qmp
	m.timings.MonitorReady = time.Since(start)
	// The default migration bandwidth limit (32 MiB/s) would make a 2 GiB
	// snapshot take a minute; local files have no reason for a limit.
	if err := qmp.Execute(bctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return nil, m.failure("configure migration", err)
	}
	if state != "" {
		err := m.incoming(bctx, "fd:3")
		if derr := dec.wait(bctx); err == nil && derr != nil {
			err = derr
		}
		if err != nil {
			dec.abort()
			return nil, m.failure("load state", err)
		}
		m.timings.StateLoaded = time.Since(start)
	}
	if err := m.connectAgent(bctx, state != ""); err != nil {
		return nil, m.failure("wait for guest agent", err)
	}
	m.timings.AgentReady = time.Since(start)
	ok = true
	return m, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// tailFile returns the last n bytes of a file.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := fi.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, fi.Size()-off)
	_, _ = f.ReadAt(b, off)
	return string(b)
}

var errExited = errors.New("QEMU exited")
