package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
	"github.com/strata-ci/strata/internal/testkernel"
)

// The end-to-end test boots the real agent (static binary, --init mode)
// in a busybox initramfs under QEMU/TCG, saves the running VM, and restores
// it twice at once in new QEMU processes: each copy must answer a new
// handshake on its new socket with its old processes still running.

func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("STRATA_E2E_REQUIRED") == "1" {
		t.Fatalf("required for end-to-end tests: %s", msg)
	}
	t.Skip(msg)
}

var initModules = []string{
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko",
	"drivers/virtio/virtio_pci.ko",
	"drivers/char/virtio_console.ko",
}

const e2eInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ` + "`cat /lib/modules/order`" + `; do insmod /lib/modules/$m || echo "insmod $m failed"; done
mkdir -p /dev/virtio-ports
for i in $(seq 1 50); do
  for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] && ln -sf /dev/$(basename $p) /dev/virtio-ports/$(cat $p/name) 2>/dev/null
  done
  [ -e /dev/virtio-ports/org.strata.agent0 ] && break
  sleep 0.1
done
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
mkdir -p /root
exec /sbin/strata-agent --init --hostname agent-e2e
`

// buildInitrd writes a newc cpio with busybox, the agent and the modules.
func buildInitrd(t *testing.T, dir string) (kernel, initrd string) {
	t.Helper()
	kdir, kver, err := testkernel.Get()
	if err != nil {
		unavailable(t, "Debian cloud kernel: %v", err)
	}
	kernel = filepath.Join(kdir, "boot", "vmlinuz-"+kver)
	for _, tool := range []string{"qemu-system-x86_64", "cpio"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, "%s not installed", tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		unavailable(t, "busybox-static not installed")
	}
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "sbin", "lib/modules", "etc", "proc", "sys", "dev", "tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(root, "sbin/strata-agent"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	copyFile(t, "/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755)
	var order []string
	for _, m := range initModules {
		copyFile(t, filepath.Join(kdir, "lib/modules", kver, "kernel", m), filepath.Join(root, "lib/modules", filepath.Base(m)), 0o644)
		order = append(order, filepath.Base(m))
	}
	if err := os.WriteFile(filepath.Join(root, "lib/modules/order"), []byte(strings.Join(order, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(e2eInit), 0o755); err != nil {
		t.Fatal(err)
	}
	initrd = filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+initrd)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	return kernel, initrd
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// qvm is one QEMU process.
type qvm struct {
	cmd     *exec.Cmd
	agent   string // agent socket
	qmp     *qmpConn
	console string
}

func startQEMU(t *testing.T, dir, name, kernel, initrd string, incoming string) *qvm {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &qvm{agent: filepath.Join(d, "agent.sock"), console: filepath.Join(d, "console.log")}
	qmpPath := filepath.Join(d, "qmp.sock")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "256", "-smp", "2",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check rdinit=/init",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent0,server=on,wait=off,path=" + v.agent,
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.strata.agent0",
		"-chardev", "file,id=con0,path=" + v.console, "-serial", "chardev:con0",
		"-qmp", "unix:" + qmpPath + ",server=on,wait=off",
	}
	if incoming != "" {
		args = append(args, "-incoming", incoming)
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	v.cmd.Stderr = &stderr
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = v.cmd.Process.Kill()
		_ = v.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(v.console)
			t.Logf("%s console:\n%s\nstderr: %s", name, b, stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", qmpPath)
		if err == nil {
			v.qmp = newQMP(t, c)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP socket: %v (stderr %s)", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return v
}

func (v *qvm) client() *agentproto.Client {
	return agentproto.NewClient(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", v.agent)
	})
}

type qmpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func newQMP(t *testing.T, c net.Conn) *qmpConn {
	q := &qmpConn{t: t, c: c, r: bufio.NewReader(c)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		t.Fatal(err)
	}
	q.do("qmp_capabilities", nil)
	return q
}

// do runs a QMP command and returns its "return" value.
func (q *qmpConn) do(cmd string, args any) json.RawMessage {
	q.t.Helper()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		q.t.Fatal(err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			q.t.Fatalf("qmp %s: %v", cmd, err)
		}
		var resp struct {
			Return json.RawMessage        `json:"return"`
			Error  *struct{ Desc string } `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			q.t.Fatalf("qmp %s: %v", cmd, err)
		}
		if resp.Error != nil {
			q.t.Fatalf("qmp %s: %s", cmd, resp.Error.Desc)
		}
		if resp.Return != nil {
			return resp.Return
		}
	}
}

func (q *qmpConn) waitMigration(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var mi struct{ Status string }
		_ = json.Unmarshal(q.do("query-migrate", nil), &mi)
		switch mi.Status {
		case "completed":
			return
		case "failed", "cancelled":
			t.Fatalf("migration %s", mi.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("migration did not complete")
}

func runOut(t *testing.T, ctx context.Context, c *agentproto.Client, script string) string {
	t.Helper()
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin"}}, nil, &out, &errb)
	if err != nil || code != 0 {
		t.Fatalf("%q: code %d err %v stderr %q", script, code, err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

func TestAgentInVMSurvivesSaveAndRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	dir := t.TempDir()
	kernel, initrd := buildInitrd(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	orig := startQEMU(t, dir, "orig", kernel, initrd, "")
	c := orig.client()
	defer c.Close()
	t0 := time.Now()
	info, err := c.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to agent answers: %v (info %+v)", time.Since(t0), info)
	if info.Hostname != "agent-e2e" {
		t.Fatalf("hostname %q", info.Hostname)
	}
	if got := runOut(t, ctx, c, "echo hi; cat /proc/1/comm"); got != "hi\nstrata-agent" {
		t.Fatalf("exec: %q", got)
	}
	// Reconnects (a new host connection each) and exec round trips.
	t0 = time.Now()
	const n = 5
	for i := 0; i < n; i++ {
		c.Close()
		c = orig.client()
		if _, err := c.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("reconnect+handshake: %v each", time.Since(t0)/n)
	t0 = time.Now()
	for i := 0; i < n; i++ {
		runOut(t, ctx, c, "true")
	}
	t.Logf("exec true round trip: %v each", time.Since(t0)/n)
	{
		body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1600000000, 0)})
		_, _ = tw.Write(body)
		_ = tw.Close()
		t0 = time.Now()
		if err := c.CopyIn(ctx, "/tmp/in", &buf); err != nil {
			t.Fatal(err)
		}
		d := time.Since(t0)
		if got := runOut(t, ctx, c, "stat -c '%s %Y' /tmp/in/big"); got != "16777216 1600000000" {
			t.Fatalf("copied file: %q", got)
		}
		t.Logf("CopyIn 16 MiB: %v (%.1f MB/s)", d, 16.777216/d.Seconds())
		var cw countWriter
		t0 = time.Now()
		code, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"cat", "/tmp/in/big"}, Env: []string{"PATH=/bin"}}, nil, &cw, nil)
		d = time.Since(t0)
		if err != nil || code != 0 || cw.n != len(body) {
			t.Fatalf("cat: %d %v %d", code, err, cw.n)
		}
		t.Logf("exec output 16 MiB: %v (%.1f MB/s)", d, 16.777216/d.Seconds())
		runOut(t, ctx, c, "rm -r /tmp/in")
	}
	// A counter keeps running in the background across save and restore.
	err = c.StartBackground(ctx, agentproto.ExecRequest{Argv: []string{"/bin/sh", "-c",
		"i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"}, Env: []string{"PATH=/bin"}},
		"/tmp/counter.log", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	before, _ := strconv.Atoi(runOut(t, ctx, c, "cat /tmp/counter"))

	// Save while the host connection is open (as the QEMU driver does).
	state := filepath.Join(dir, "state")
	orig.qmp.do("stop", nil)
	orig.qmp.do("migrate", map[string]any{"uri": "exec:cat > " + state})
	orig.qmp.waitMigration(t)
	_ = orig.cmd.Process.Kill()
	_ = orig.cmd.Wait()
	c.Close()

	// Two copies at once, then a third from the same state.
	restore := func(t *testing.T, name string) {
		v := startQEMU(t, dir, name, kernel, initrd, "exec:cat "+state)
		v.qmp.waitMigration(t)
		v.qmp.do("cont", nil)
		t0 := time.Now()
		var firstByte time.Duration
		rc := agentproto.NewClient(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", v.agent)
			if err != nil {
				return nil, err
			}
			return &firstReadConn{Conn: c, at: func() {
				if firstByte == 0 {
					firstByte = time.Since(t0)
				}
			}}, nil
		})
		defer rc.Close()
		rinfo, err := rc.Handshake(ctx)
		if err != nil {
			t.Errorf("%s: handshake: %v", name, err)
			return
		}
		t.Logf("%s: restored agent answered %v after cont (first byte from the guest after %v)", name, time.Since(t0), firstByte)
		if rinfo.BootID != info.BootID {
			t.Errorf("%s: boot id %s, want the saved VM's %s", name, rinfo.BootID, info.BootID)
		}
		if err := rc.SetClock(ctx, time.Now()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := rc.AddEntropy(ctx, []byte(name+" seed 0123456789abcdef")); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		n1, _ := strconv.Atoi(runOut(t, ctx, rc, "cat /tmp/counter"))
		time.Sleep(400 * time.Millisecond)
		n2, _ := strconv.Atoi(runOut(t, ctx, rc, "cat /tmp/counter"))
		if n1 < before || n2 <= n1 {
			t.Errorf("%s: counter %d before save, %d then %d after restore: background process not running", name, before, n1, n2)
		}
		// Clock was set: guest and host agree within a few seconds.
		g, _ := strconv.ParseInt(runOut(t, ctx, rc, "date +%s"), 10, 64)
		if d := time.Now().Unix() - g; d < -3 || d > 3 {
			t.Errorf("%s: guest clock off by %ds", name, d)
		}
		// A second connection to the same VM (a new host process). QEMU's
		// socket chardev serves one client at a time: the old one leaves.
		rc.Close()
		rc2 := v.client()
		defer rc2.Close()
		if _, err := rc2.Handshake(ctx); err != nil {
			t.Errorf("%s: second handshake: %v", name, err)
			return
		}
		if got := runOut(t, ctx, rc2, "echo again"); got != "again" {
			t.Errorf("%s: %q", name, got)
		}
	}
	t.Run("two-at-once", func(t *testing.T) {
		for _, name := range []string{"copy1", "copy2"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				restore(t, name)
			})
		}
	})
	t.Run("again", func(t *testing.T) { restore(t, "copy3") })
}

// firstReadConn calls at on every read that returned data.
type firstReadConn struct {
	net.Conn
	at func()
}

func (c *firstReadConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.at()
	}
	return n, err
}
