package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
)

// debianImageDir finds a built vm/debian:12 image: STRATA_TEST_DEBIAN_IMAGE,
// else the newest one in the image tests' shared cache.
func debianImageDir() string {
	if d := os.Getenv("STRATA_TEST_DEBIAN_IMAGE"); d != "" {
		return d
	}
	metas, _ := filepath.Glob("/var/tmp/strata-test-images/built/*/image.json")
	best, bestTime := "", time.Time{}
	for _, m := range metas {
		var meta struct{ Name string }
		b, err := os.ReadFile(m)
		if err != nil || json.Unmarshal(b, &meta) != nil || meta.Name != "vm/debian:12" {
			continue
		}
		if st, err := os.Stat(m); err == nil && st.ModTime().After(bestTime) {
			best, bestTime = filepath.Dir(m), st.ModTime()
		}
	}
	return best
}

// TestAgentUnderSystemd boots a built Debian base image (directory with
// disk.qcow2, vmlinuz, initrd.img, image.json as internal/image writes it),
// installs this tree's agent in it, restarts the systemd service and checks
// the agent there: reconnection after an agent restart, users from the
// real /etc/passwd, TTY, background processes, OOM score of children.
func TestAgentUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a Debian VM")
	}
	dir := debianImageDir()
	if dir == "" {
		unavailable(t, "no built vm/debian:12 image (set STRATA_TEST_DEBIAN_IMAGE or run the internal/image tests)")
	}
	var meta struct{ Cmdline string }
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	overlay := filepath.Join(tmp, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
		"-b", filepath.Join(dir, "disk.qcow2"), overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	v := &qvm{agent: filepath.Join(tmp, "agent.sock"), console: filepath.Join(tmp, "console.log")}
	v.cmd = exec.Command("qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-kernel", filepath.Join(dir, "vmlinuz"), "-initrd", filepath.Join(dir, "initrd.img"),
		// no_timer_check: under TCG on a loaded host the kernel's IO-APIC
		// timer check can fail and panic.
		"-append", meta.Cmdline+" no_timer_check",
		"-drive", "file="+overlay+",if=virtio,format=qcow2",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent0,server=on,wait=off,path="+v.agent,
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.strata.agent0",
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
		"-chardev", "file,id=con0,path="+v.console, "-serial", "chardev:con0")
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = v.cmd.Process.Kill()
		_ = v.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(v.console)
			t.Logf("console:\n%s", b)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := v.client()
	defer c.Close()
	t0 := time.Now()
	info, err := c.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to agent answers: %v (%+v)", time.Since(t0), info)

	// Install this tree's agent over the baked-in one (it is running:
	// CopyIn replaces it by rename) and restart the service; the client
	// reconnects to the new agent process.
	agentBin := filepath.Join(tmp, "strata-agent")
	build := exec.Command("go", "build", "-trimpath", "-o", agentBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "strata-agent", Mode: 0o755, Size: int64(len(bin)), ModTime: time.Now()})
	_, _ = tw.Write(bin)
	_ = tw.Close()
	// The baked-in agent may predate replacing busy executables: copy
	// beside it and let install(1) swap it.
	if err := c.CopyIn(ctx, "/run/strata-new", &tb); err != nil {
		t.Fatal(err)
	}
	if code, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"install", "-m755", "/run/strata-new/strata-agent", "/usr/local/bin/strata-agent"}}, nil, nil, nil); code != 0 || err != nil {
		t.Fatalf("install: %d %v", code, err)
	}
	if err := c.StartBackground(ctx, agentproto.ExecRequest{Argv: []string{"/bin/sh", "-c", "sleep 0.3; systemctl restart strata-agent"}},
		"/var/log/strata-restart.log", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	// The old agent may die mid-call (and may be too old to announce its
	// successor), so every attempt has its own deadline.
	var newInfo agentproto.Info
	for {
		if ctx.Err() != nil {
			t.Fatal("the restarted agent never answered")
		}
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		var pid, exe bytes.Buffer
		newInfo, err = c.Handshake(actx)
		if err == nil {
			_, err = c.Exec(actx, agentproto.ExecRequest{Argv: []string{"pgrep", "-x", "strata-agent"}}, nil, &pid, nil)
		}
		if err == nil {
			_, err = c.Exec(actx, agentproto.ExecRequest{Argv: []string{"sh", "-c", "sha256sum < /proc/" + strings.TrimSpace(pid.String()) + "/exe"}}, nil, &exe, nil)
		}
		cancel()
		if err == nil && strings.HasPrefix(exe.String(), sha256hex(bin)) {
			break
		}
		t.Logf("waiting for the new agent: %v", err)
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("agent restarted: %+v", newInfo)
	bash := func(user, script string, tty bool) (int, string) {
		var out bytes.Buffer
		code, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"/bin/bash", "-c", script},
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, User: user, TTY: tty}, nil, &out, &out)
		if err != nil {
			t.Fatalf("%q: %v", script, err)
		}
		return code, strings.ReplaceAll(out.String(), "\r", "")
	}
	if code, out := bash("", "systemctl is-active strata-agent; cat /proc/$(pgrep -x strata-agent)/oom_score_adj; sleep 0.1; cat /proc/$$/oom_score_adj; hostname", false); code != 0 || out != "active\n-1000\n0\nlayerfile\n" {
		t.Fatalf("service: code %d %q", code, out)
	}
	if code, out := bash("", "useradd -m -G root builder && echo ok", false); code != 0 || out != "ok\n" {
		t.Fatalf("useradd: %d %q", code, out)
	}
	if code, out := bash("builder", `echo "$USER $HOME $(pwd) $(id -Gn)"`, false); code != 0 || out != "builder /home/builder /home/builder builder root\n" {
		t.Fatalf("as builder: %d %q", code, out)
	}
	if code, out := bash("builder", "tty | grep -q /dev/pts && echo tty-ok", true); code != 0 || out != "tty-ok\n" {
		t.Fatalf("tty as builder: %d %q", code, out)
	}
	err = c.StartBackground(ctx, agentproto.ExecRequest{Argv: []string{"/bin/bash", "-c", "echo up; exec sleep 1000"}, User: "builder"},
		"/home/builder/logs/bg.log", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if code, out := bash("", "stat -c %U /home/builder/logs/bg.log; cat /home/builder/logs/bg.log; pgrep -u builder -x sleep >/dev/null && echo running", false); code != 0 || out != "builder\nup\nrunning\n" {
		t.Fatalf("background: %d %q", code, out)
	}
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
