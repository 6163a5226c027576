package vm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/vm"
	"github.com/strata-ci/strata/internal/vm/vmtest"
)

var fastSpec = vm.Spec{MemoryMB: 256, CPUs: 2}

func boot(t *testing.T, q *vm.QEMU, img vm.Image, dir string) vm.Machine {
	t.Helper()
	m, err := q.Boot(context.Background(), img, filepath.Join(dir, "boot", "overlay.qcow2"), fastSpec)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// sh runs a shell command and returns its stdout, failing on a non-zero exit.
func sh(t *testing.T, m vm.Machine, script string) string {
	t.Helper()
	out, code := shCode(t, m, script)
	if code != 0 {
		t.Fatalf("%q exited %d: %s", script, code, out)
	}
	return out
}

func shCode(t *testing.T, m vm.Machine, script string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code, err := m.Run(ctx, vm.Exec{Argv: []string{"sh", "-c", script}}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run %q: %v (stderr %q)", script, err, stderr.String())
	}
	return stdout.String() + stderr.String(), code
}

func TestRunEchoExitEnvUserDir(t *testing.T) {
	q := vmtest.QEMU(t)
	img := vmtest.Fast(t)
	m := boot(t, q, img, t.TempDir())
	ctx := context.Background()

	var out bytes.Buffer
	code, err := m.Run(ctx, vm.Exec{Argv: []string{"echo", "hello", "world"}}, &out, io.Discard)
	if err != nil || code != 0 || out.String() != "hello world\n" {
		t.Fatalf("echo: code %d err %v out %q", code, err, out.String())
	}
	if _, code := shCode(t, m, "exit 7"); code != 7 {
		t.Fatalf("exit 7 returned %d", code)
	}
	out.Reset()
	code, err = m.Run(ctx, vm.Exec{
		Argv: []string{"sh", "-c", `echo "$FOO"; id -u; pwd`},
		Env:  []string{"FOO=bar baz", "PATH=/bin:/sbin"},
		User: "nobody",
		Dir:  "/tmp",
	}, &out, io.Discard)
	if err != nil || code != 0 {
		t.Fatalf("env/user/dir: %d %v", code, err)
	}
	if got, want := out.String(), "bar baz\n65534\n/tmp\n"; got != want {
		t.Fatalf("env/user/dir output %q, want %q", got, want)
	}
	// stdin is passed through.
	out.Reset()
	code, err = m.Run(ctx, vm.Exec{Argv: []string{"cat"}, Stdin: strings.NewReader("from stdin")}, &out, io.Discard)
	if err != nil || code != 0 || out.String() != "from stdin" {
		t.Fatalf("stdin: %d %v %q", code, err, out.String())
	}
}

func TestHangingCommandIsCancellable(t *testing.T) {
	q := vmtest.QEMU(t)
	m := boot(t, q, vmtest.Fast(t), t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := m.Run(ctx, vm.Exec{Argv: []string{"sleep", "1000"}}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("hanging command returned no error after cancellation")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("cancellation took %s", d)
	}
	if out := sh(t, m, "ps | grep -v grep | grep 'sleep 1000' || echo none"); strings.TrimSpace(out) != "none" {
		t.Fatalf("sleep still running in the guest: %q", out)
	}
}

func TestForwardReachesGuestServer(t *testing.T) {
	q := vmtest.QEMU(t)
	m := boot(t, q, vmtest.Fast(t), t.TempDir())
	sh(t, m, "mkdir -p /tmp/www && echo served-by-guest > /tmp/www/index.html")
	if err := m.StartBackground(context.Background(), vm.Exec{Argv: []string{"httpd", "-f", "-p", "8080", "-h", "/tmp/www"}}, "/tmp/httpd.log", time.Second); err != nil {
		t.Fatal(err)
	}
	addr, err := m.Forward(context.Background(), 8080)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("forward bound to %q, want loopback", addr)
	}
	body := httpGet(t, "http://"+addr+"/")
	if body != "served-by-guest\n" {
		t.Fatalf("GET through forward: %q", body)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(b)
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readInt(t *testing.T, m vm.Machine, path string) int {
	t.Helper()
	s := strings.TrimSpace(sh(t, m, "cat "+path))
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %q", path, s)
	}
	return n
}

func TestSnapshotRestore(t *testing.T) {
	q := vmtest.QEMU(t)
	img := vmtest.Fast(t)
	dir := t.TempDir()
	m := boot(t, q, img, dir)
	ctx := context.Background()

	// A counter running before the snapshot, a file on the disk and one in
	// memory (tmpfs), and a guest clock 10 minutes in the past (an old
	// snapshot).
	if err := m.StartBackground(ctx, vm.Exec{Argv: []string{"sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"}}, "/tmp/counter.log", 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	sh(t, m, "echo on-disk > /data/before && echo in-ram > /tmp/before && sync")
	if err := m.StartBackground(ctx, vm.Exec{Argv: []string{"httpd", "-f", "-p", "8080", "-h", "/data"}}, "/tmp/httpd.log", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	sh(t, m, "date -s @$(( $(date +%s) - 600 )) >/dev/null")
	time.Sleep(500 * time.Millisecond)
	before := readInt(t, m, "/tmp/count")

	layer := m.Overlay()
	state := filepath.Join(dir, "snap1", "state")
	os.MkdirAll(filepath.Dir(state), 0o755)
	next := filepath.Join(dir, "next", "overlay.qcow2")
	res, err := m.Snapshot(ctx, state, next)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Logf("snapshot: pause %s, total %s, state %d bytes, disk %d bytes", res.Pause, res.Total, res.StateBytes, res.DiskBytes)
	if res.Pause <= 0 || res.Total < res.Pause || res.StateBytes <= 0 || res.DiskBytes <= 0 {
		t.Fatalf("implausible snapshot result %+v", res)
	}
	if m.Overlay() != next {
		t.Fatalf("overlay after snapshot %q, want %q", m.Overlay(), next)
	}
	// The new overlay's backing file is the frozen layer, relative.
	info, err := exec.Command("qemu-img", "info", "-U", "--output=json", next).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v: %s", err, info)
	}
	if want := `"backing-filename": "../boot/overlay.qcow2"`; !strings.Contains(string(info), want) {
		t.Fatalf("qemu-img info of next overlay lacks %s:\n%s", want, info)
	}
	// The original VM keeps running on the new overlay.
	sh(t, m, "echo after > /data/after-orig && sync")

	snap := vm.SnapshotFiles{Disk: layer, State: state, MachineArgs: q.MachineArgs(img, fastSpec)}
	restore := func(name string) vm.Machine {
		t0 := time.Now()
		r, err := q.Restore(ctx, img, snap, filepath.Join(dir, name, "overlay.qcow2"), fastSpec)
		if err != nil {
			t.Fatalf("restore %s: %v", name, err)
		}
		t.Cleanup(func() { r.Close() })
		tm, _ := vm.MachineTimings(r)
		t.Logf("restore %s: %s (since QEMU start: monitor %s, state loaded %s, handshake %s, clock+entropy %s)", name, time.Since(t0), tm.MonitorReady, tm.StateLoaded, tm.Handshake, tm.AgentReady)
		return r
	}
	r1 := restore("r1")
	r2 := restore("r2")

	for _, r := range []vm.Machine{r1, r2} {
		// The counter continued from where it was, in the new process.
		c1 := readInt(t, r, "/tmp/count")
		if c1 < before || c1 > before+100 {
			t.Fatalf("counter after restore %d, snapshot taken at about %d", c1, before)
		}
		time.Sleep(700 * time.Millisecond)
		if c2 := readInt(t, r, "/tmp/count"); c2 <= c1 {
			t.Fatalf("counter stopped after restore: %d then %d", c1, c2)
		}
		if got := sh(t, r, "cat /data/before /tmp/before"); got != "on-disk\nin-ram\n" {
			t.Fatalf("files after restore: %q", got)
		}
		if out, code := shCode(t, r, "cat /data/after-orig"); code == 0 {
			t.Fatalf("a file written by the original VM after the snapshot leaked into the restored one: %q", out)
		}
		guest, _ := strconv.ParseInt(strings.TrimSpace(sh(t, r, "date +%s")), 10, 64)
		if d := time.Now().Unix() - guest; d < -2 || d > 2 {
			t.Fatalf("guest clock off by %d s after restore", d)
		}
	}
	// The two copies diverge: separate disks and separate random pools.
	sh(t, r1, "echo one > /data/who && sync")
	sh(t, r2, "echo two > /data/who && sync")
	if a, b := sh(t, r1, "cat /data/who"), sh(t, r2, "cat /data/who"); a != "one\n" || b != "two\n" {
		t.Fatalf("copies share state: %q %q", a, b)
	}
	rnd := "head -c 16 /dev/urandom | od -An -tx1"
	if a, b := sh(t, r1, rnd), sh(t, r2, rnd); a == b {
		t.Fatalf("copies produced the same random bytes %q", a)
	}
	// A server started before the snapshot answers through a forward added
	// to the restored VM.
	addr, err := r1.Forward(ctx, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if body := httpGet(t, "http://"+addr+"/before"); body != "on-disk\n" {
		t.Fatalf("server after restore: %q", body)
	}
	// Snapshotting a restored VM works too (a chain of layers).
	state2 := filepath.Join(dir, "snap2", "state")
	os.MkdirAll(filepath.Dir(state2), 0o755)
	res2, err := r2.Snapshot(ctx, state2, filepath.Join(dir, "r2next", "overlay.qcow2"))
	if err != nil {
		t.Fatalf("snapshot of restored VM: %v", err)
	}
	// It stores only what changed since the state it was restored from.
	t.Logf("second snapshot: stream %d bytes, stored %d bytes (first stored %d)", res2.StateStreamBytes, res2.StateBytes, res.StateBytes)
	if res2.StateBytes <= 0 || res2.StateBytes > res.StateBytes/2 {
		t.Fatalf("second snapshot stored %d bytes, the first %d: want at most half", res2.StateBytes, res.StateBytes)
	}
	r3, err := q.Restore(ctx, img, vm.SnapshotFiles{Disk: filepath.Join(dir, "r2", "overlay.qcow2"), State: state2, MachineArgs: snap.MachineArgs}, filepath.Join(dir, "r3", "overlay.qcow2"), fastSpec)
	if err != nil {
		t.Fatalf("restore of second-level snapshot: %v", err)
	}
	defer r3.Close()
	if got := sh(t, r3, "cat /data/who /data/before"); got != "two\non-disk\n" {
		t.Fatalf("second-level restore sees %q", got)
	}
}

func TestKillDuringSaveLeavesNoState(t *testing.T) {
	q := vmtest.QEMU(t)
	dir := t.TempDir()
	m := boot(t, q, vmtest.Fast(t), dir)
	sh(t, m, "head -c 20000000 /dev/urandom > /tmp/fill")
	state := filepath.Join(dir, "state")
	errc := make(chan error, 1)
	go func() {
		_, err := m.Snapshot(context.Background(), state, filepath.Join(dir, "next.qcow2"))
		errc <- err
	}()
	// Kill QEMU as soon as the state's pack has data: mid-save.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if fi, err := os.Stat(state + ".pack"); err == nil && fi.Size() > 0 {
			t.Logf("killing QEMU with %d bytes of state written", fi.Size())
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no state pack appeared")
		}
	}
	if err := syscall.Kill(vm.PID(m), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if err == nil {
		t.Fatal("snapshot succeeded although QEMU was killed during the save")
	}
	t.Logf("snapshot error: %v", err)
	if !errors.Is(err, vm.ErrVMDied) {
		t.Errorf("error does not wrap ErrVMDied: %v", err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state file present after a failed save: %v", err)
	}
	if left, _ := filepath.Glob(state + "*"); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestRestoreRefusesMismatchedMachine(t *testing.T) {
	q := vmtest.QEMU(t)
	img := vmtest.Fast(t)
	snap := vm.SnapshotFiles{Disk: img.Disk, State: "/nonexistent", MachineArgs: q.MachineArgs(img, vm.Spec{MemoryMB: 512, CPUs: 2})}
	if snap.MachineArgs == q.MachineArgs(img, vm.Spec{MemoryMB: 1024, CPUs: 2}) {
		t.Fatal("different memory sizes have the same fingerprint")
	}
	if a, b := q.MachineArgs(img, vm.Spec{}), q.MachineArgs(img, vm.Spec{MemoryMB: 2048, CPUs: 2}); a != b {
		t.Fatalf("defaults not applied: %s vs %s", a, b)
	}
	_, err := q.Restore(context.Background(), img, snap, filepath.Join(t.TempDir(), "o.qcow2"), vm.Spec{MemoryMB: 1024, CPUs: 2})
	if !errors.Is(err, vm.ErrIncompatible) {
		t.Fatalf("restore with other memory size: %v, want ErrIncompatible", err)
	}
	t.Log(err)
}

func TestMissingQEMUIsDetectable(t *testing.T) {
	_, err := vm.NewQEMU(vm.QEMUOptions{Binary: "/nonexistent/qemu-system-x86_64"})
	if !errors.Is(err, vm.ErrNoQEMU) || !strings.Contains(err.Error(), "qemu-system-x86") {
		t.Fatalf("got %v, want ErrNoQEMU naming the Debian package", err)
	}
}

func TestPausedSnapshotFallbackRestores(t *testing.T) {
	q := vmtest.QEMU(t)
	vm.DisableBackgroundSnapshot(q)
	img := vmtest.Fast(t)
	dir := t.TempDir()
	m := boot(t, q, img, dir)
	sh(t, m, "echo paused-save > /data/f && echo mem > /tmp/f && sync")
	layer := m.Overlay()
	state := filepath.Join(dir, "state")
	res, err := m.Snapshot(context.Background(), state, filepath.Join(dir, "next.qcow2"))
	if err != nil {
		t.Fatalf("paused snapshot: %v", err)
	}
	t.Logf("paused snapshot: pause %s, total %s", res.Pause, res.Total)
	if res.Pause < res.Total/2 {
		t.Fatalf("paused save reports pause %s of total %s", res.Pause, res.Total)
	}
	sh(t, m, "echo still-running")
	r, err := q.Restore(context.Background(), img, vm.SnapshotFiles{Disk: layer, State: state, MachineArgs: q.MachineArgs(img, fastSpec)},
		filepath.Join(dir, "r", "overlay.qcow2"), fastSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := sh(t, r, "cat /data/f /tmp/f"); got != "paused-save\nmem\n" {
		t.Fatalf("after restore: %q", got)
	}
}

func TestCancelledContextKillsQEMU(t *testing.T) {
	q := vmtest.QEMU(t)
	img := vmtest.Fast(t)
	ctx, cancel := context.WithCancel(context.Background())
	m, err := q.Boot(ctx, img, filepath.Join(t.TempDir(), "o.qcow2"), fastSpec)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer m.Close()
	pid := vm.PID(m)
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(b), ") Z ") {
			break // exited, not yet reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %d still running 10 s after its context was cancelled", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := m.Run(context.Background(), vm.Exec{Argv: []string{"true"}}, io.Discard, io.Discard); err == nil {
		t.Fatal("Run succeeded on a killed VM")
	}
}

func TestStartSnapshotOverlapsCommands(t *testing.T) {
	q := vmtest.QEMU(t)
	img := vmtest.Fast(t)
	dir := t.TempDir()
	m := boot(t, q, img, dir)
	ctx := context.Background()
	sh(t, m, "echo before > /data/f && echo mem-before > /tmp/f && sync")
	layer := m.Overlay()
	state := filepath.Join(dir, "state")
	finish, err := m.StartSnapshot(ctx, state, filepath.Join(dir, "next.qcow2"))
	if err != nil {
		t.Fatalf("start snapshot: %v", err)
	}
	// The guest runs (and writes) while its memory is being saved.
	sh(t, m, "echo after > /data/f && echo mem-after > /tmp/f && sync")
	if _, err := m.StartSnapshot(ctx, filepath.Join(dir, "s2.zst"), filepath.Join(dir, "n2.qcow2")); err == nil {
		t.Fatal("a second snapshot started while the first was being saved")
	}
	res, err := finish(ctx)
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	t.Logf("snapshot: pause %s, total %s", res.Pause, res.Total)
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("state after finish: %v", err)
	}
	r, err := q.Restore(ctx, img, vm.SnapshotFiles{Disk: layer, State: state, MachineArgs: q.MachineArgs(img, fastSpec)},
		filepath.Join(dir, "r", "overlay.qcow2"), fastSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The restored VM is the guest as it was at the pause, not later.
	if got := sh(t, r, "cat /data/f /tmp/f"); got != "before\nmem-before\n" {
		t.Fatalf("restored state %q, want the state at the snapshot", got)
	}
	if got := sh(t, m, "cat /data/f /tmp/f"); got != "after\nmem-after\n" {
		t.Fatalf("original VM after the snapshot: %q", got)
	}
}
