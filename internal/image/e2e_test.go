package image_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/image/imagetest"
)

// serialVM is a QEMU guest driven through its serial console (the image
// logs root in automatically on ttyS0).
type serialVM struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   strings.Builder
	seq   int
}

// bootSerial boots b on a throwaway overlay with the devices the QEMU
// driver uses (virtio disk, virtio-net user networking, the agent's
// virtio-serial port).
func bootSerial(t *testing.T, b image.Built) *serialVM {
	t.Helper()
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
		"-b", b.Image.Disk, overlay).CombinedOutput(); err != nil {
		t.Fatalf("overlay: %v\n%s", err, out)
	}
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg,thread=multi", "-m", "1024", "-smp", "2",
		"-nographic", "-no-reboot",
		"-kernel", b.Image.Kernel, "-initrd", b.Image.Initrd, "-append", b.Image.Cmdline,
		"-drive", "file="+overlay+",if=virtio,format=qcow2",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+filepath.Join(dir, "agent.sock")+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=org.strata.agent0",
	)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	vm := &serialVM{t: t, cmd: cmd, stdin: stdin}
	go func() {
		r := bufio.NewReader(stdout)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			vm.mu.Lock()
			vm.out.Write(buf[:n])
			vm.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("serial console:\n%s", vm.output())
		}
	})
	return vm
}

func (vm *serialVM) output() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.out.String()
}

// waitFor waits until the console output (from offset from) contains s.
func (vm *serialVM) waitFor(from int, s string, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out := vm.output()
		if from <= len(out) && strings.Contains(out[from:], s) {
			return out[from:], true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", false
}

// run types a command on the console and returns what it printed.
func (vm *serialVM) run(command string, timeout time.Duration) string {
	vm.t.Helper()
	vm.seq++
	// The markers are computed by the shell, so the echo of the typed
	// line does not match them.
	start := fmt.Sprintf("==S%d==", vm.seq)
	end := fmt.Sprintf("==E%d==", vm.seq)
	line := fmt.Sprintf("echo ==S$((%d))==; %s; echo ==E$((%d))==\n", vm.seq, command, vm.seq)
	from := len(vm.output())
	if _, err := io.WriteString(vm.stdin, line); err != nil {
		vm.t.Fatalf("write console: %v", err)
	}
	out, ok := vm.waitFor(from, end, timeout)
	if !ok {
		vm.t.Fatalf("command %q did not finish within %s", command, timeout)
	}
	i := strings.Index(out, start+"\r\n")
	if i < 0 {
		i = strings.Index(out, start+"\n")
	}
	out = out[i+len(start):]
	out = out[:strings.Index(out, end)]
	return strings.TrimSpace(strings.ReplaceAll(out, "\r", ""))
}

// TestBuildAndBoot builds vm/debian:12 (once per images dir; minutes the
// first time) and boots it under TCG: systemd reaches multi-user, the agent
// service is active, the agent port exists, DNS and HTTP work, and the
// image has the promised configuration.
func TestBuildAndBoot(t *testing.T) {
	b := imagetest.Ensure(t)
	t.Logf("image %s %s: %s on disk", b.Name, b.ID, fmt.Sprintf("%.0f MiB", float64(b.Size)/(1<<20)))
	vm := bootSerial(t, b)
	start := time.Now()
	if _, ok := vm.waitFor(0, "root@layerfile:", 4*time.Minute); !ok {
		t.Fatalf("no root shell on the serial console within 4 minutes")
	}
	t.Logf("root shell on the console %.1fs after QEMU started", time.Since(start).Seconds())
	vm.run("stty -echo; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat", 10*time.Second)

	checks := []struct{ cmd, want string }{
		{"systemctl is-system-running --wait", "running"},
		{"systemctl is-active multi-user.target", "active"},
		{"systemctl is-active strata-agent.service", "active"},
		{"systemctl show -p Restart --value strata-agent.service", "always"},
		{"test -x /usr/local/bin/strata-agent && echo ok", "ok"},
		{"ls /dev/virtio-ports/", "org.strata.agent0"},
		{"hostname", "layerfile"},
		{"getent hosts layerfile | awk '{print $1}'", "127.0.1.1"},
		{"cat /etc/resolv.conf | grep ^nameserver", "nameserver 10.0.2.3"},
		{"findmnt -n -o SOURCE,FSTYPE /", "/dev/vda ext4"},
		{"findmnt -n -o OPTIONS / | grep -o '^rw'", "rw"},
		{"apt-config dump APT::Get::Assume-Yes", `APT::Get::Assume-Yes "true";`},
		{"for c in bash sudo curl git ip ps less systemctl; do command -v $c >/dev/null || echo missing $c; done; echo done", "done"},
		{"ip -4 -o addr show eth0 | awk '{print $4}'", "10.0.2.15/24"},
		{"getent hosts deb.debian.org >/dev/null && echo resolved", "resolved"},
		{"curl -sS -o /dev/null -w '%{http_code}' http://deb.debian.org/debian/dists/bookworm/InRelease", "200"},
		{"blockdev --getsize64 /dev/vda", "64424509440"},
		{"systemctl --failed --no-legend --plain | wc -l", "0"},
	}
	for _, c := range checks {
		got := vm.run(c.cmd, 90*time.Second)
		t.Logf("%s → %q", c.cmd, got)
		if got != c.want {
			t.Errorf("%s\n got: %q\nwant: %q", c.cmd, got, c.want)
		}
	}
	// How early the agent runs compared with multi-user (µs since the
	// kernel started; informational, timing is for benchmarks).
	t.Logf("agent active at %s µs, multi-user at %s µs after kernel start",
		vm.run("systemctl show -p ActiveEnterTimestampMonotonic --value strata-agent.service", 10*time.Second),
		vm.run("systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target", 10*time.Second))
	if t.Failed() {
		t.Logf("failed units:\n%s", vm.run("systemctl --failed --no-pager; journalctl -b --no-pager -p warning | tail -40", 30*time.Second))
	}
}

// TestBuildExtraPackages builds the image with docker.io and
// busybox-static preinstalled and checks they are there and dockerd runs.
func TestBuildExtraPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a second image; skipped with -short")
	}
	b := imagetest.Ensure(t, "docker.io", "busybox-static")
	if strings.Join(b.Packages, ",") != "busybox-static,docker.io" {
		t.Errorf("packages = %v", b.Packages)
	}
	vm := bootSerial(t, b)
	if _, ok := vm.waitFor(0, "root@layerfile:", 4*time.Minute); !ok {
		t.Fatalf("no root shell on the serial console within 4 minutes")
	}
	vm.run("stty -echo; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat", 10*time.Second)
	for _, c := range []struct{ cmd, want string }{
		{"busybox true && echo ok", "ok"},
		{"timeout 120 sh -c 'until docker info >/dev/null 2>&1; do sleep 1; done'; docker info --format '{{.ServerVersion}}' | grep -c .", "1"},
		{"systemctl is-active strata-agent.service", "active"},
	} {
		if got := vm.run(c.cmd, 150*time.Second); got != c.want {
			t.Errorf("%s\n got: %q\nwant: %q", c.cmd, got, c.want)
		}
	}
}

// TestConcurrentEnsure: two concurrent Ensure calls of the same image (in a
// fresh images dir that shares only the cached rootfs) build the disk once
// and return the same image; a third call reuses it.
func TestConcurrentEnsure(t *testing.T) {
	shared := imagetest.Ensure(t)
	agent := imagetest.BuildAgent(t)
	sharedCfg := imagetest.Config(t, agent)
	cfg := sharedCfg
	cfg.ImagesDir = t.TempDir()
	// Hard-link the cached rootfs so only level 2 is built here.
	src := filepath.Join(sharedCfg.ImagesDir, "rootfs", shared.RootfsKey)
	dst := filepath.Join(cfg.ImagesDir, "rootfs", shared.RootfsKey)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rootfs.tar.zst", "recipe.json"} {
		if err := os.Link(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	res := make([]image.Built, 2)
	errs := make([]error, 2)
	logs := make([]strings.Builder, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = image.Ensure(ctx, cfg, "vm/debian:12", nil, &logs[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ensure %d: %v\n%s", i, err, logs[i].String())
		}
	}
	if res[0].ID != res[1].ID || res[0].Dir != res[1].Dir || res[0].ID != shared.ID {
		t.Errorf("images differ: %s %s (shared %s)", res[0].ID, res[1].ID, shared.ID)
	}
	built := 0
	for i := range logs {
		if strings.Contains(logs[i].String(), "disk built in") {
			built++
		}
		if strings.Contains(logs[i].String(), "bootstrapping") {
			t.Errorf("rootfs rebuilt although cached:\n%s", logs[i].String())
		}
	}
	if built != 1 {
		t.Errorf("disk built %d times, want once:\n%s\n---\n%s", built, logs[0].String(), logs[1].String())
	}
	var again strings.Builder
	if b, err := image.Ensure(ctx, cfg, "vm/debian:12", nil, &again); err != nil || b.ID != res[0].ID || again.Len() != 0 {
		t.Errorf("third ensure: %v, id %s, output %q", err, b.ID, again.String())
	}
	all, err := image.List(cfg)
	if err != nil || len(all) != 1 {
		t.Errorf("List = %v, %v; want one image", all, err)
	}
	tmp, _ := filepath.Glob(filepath.Join(cfg.ImagesDir, "tmp", "*"))
	if len(tmp) != 0 {
		t.Errorf("temp dirs left: %v", tmp)
	}
}
