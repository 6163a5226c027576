// Package vmtest provides real, bootable test fixtures for tests that start
// VMs: a fast busybox initramfs with the guest agent as init, booted by the
// Debian cloud kernel (about 2 s to "agent answers" under TCG).
//
// Fixtures that cannot be built (no QEMU, no network to fetch the kernel)
// make the test skip, or fail when STRATA_E2E_REQUIRED=1.
package vmtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/testkernel"
	"github.com/strata-ci/strata/internal/vm"
	"github.com/strata-ci/strata/internal/vm/initramfs"
)

// CacheDir is where the kernel and built fixtures are cached across runs.
const CacheDir = testkernel.CacheDir

// Unavailable skips t (or fails it when STRATA_E2E_REQUIRED=1) because a
// prerequisite is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("STRATA_E2E_REQUIRED") == "1" {
		t.Fatalf("required for end-to-end tests: %s", msg)
	}
	t.Skip(msg)
}

// QEMU returns a QEMU hypervisor whose caches live in the test's temporary
// directory (the KVM verdict is shared under CacheDir).
func QEMU(t testing.TB) *vm.QEMU {
	t.Helper()
	q, err := vm.NewQEMU(vm.QEMUOptions{
		CacheDir:    filepath.Join(CacheDir, "accel"),
		Warn:        testWriter{t},
		BootTimeout: 2 * time.Minute,
	})
	if err != nil {
		Unavailable(t, "QEMU: %v", err)
	}
	return q
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Modules are the kernel modules the fast fixture loads (their
// dependencies, read from each module's .modinfo, are loaded first).
var Modules = []string{"virtio_pci", "virtio_console", "virtio_blk", "virtio_net", "virtio_rng"}

// moduleOrder resolves mods and their dependencies below kernelDir
// (lib/modules/<version>/kernel) into load order, as paths relative to
// kernelDir.
func moduleOrder(kernelDir string, mods []string) ([]string, error) {
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	paths := map[string]string{}
	err := filepath.WalkDir(kernelDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(kernelDir, p)
			paths[norm(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		name = norm(name)
		if seen[name] {
			return nil
		}
		seen[name] = true
		rel, ok := paths[name]
		if !ok {
			return fmt.Errorf("module %s not found below %s (built in?)", name, kernelDir)
		}
		b, err := os.ReadFile(filepath.Join(kernelDir, rel))
		if err != nil {
			return err
		}
		if i := bytes.Index(b, []byte("\x00depends=")); i >= 0 {
			rest := b[i+len("\x00depends="):]
			if j := bytes.IndexByte(rest, 0); j >= 0 {
				for _, dep := range strings.Split(string(rest[:j]), ",") {
					if dep != "" {
						if err := visit(dep); err != nil {
							return err
						}
					}
				}
			}
		}
		order = append(order, rel)
		return nil
	}
	for _, m := range mods {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// initScript is /init of the fast fixture: load drivers, name the agent's
// port like udev would, mount the data disk, bring up the network, then
// become the agent.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /data
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "insmod $m failed"; done
mkdir -p /dev/virtio-ports
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] && ln -sf /dev/$(basename $p) /dev/virtio-ports/$(cat $p/name) 2>/dev/null
  done
  [ -e /dev/virtio-ports/org.strata.agent0 ] && [ -b /dev/vda ] && break
  sleep 0.1
done
mount -t ext4 /dev/vda /data || echo "mount /dev/vda failed"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "nobody:x:65534:65534:nobody:/home/nobody:/bin/sh" >> /etc/passwd
echo "root:x:0:" > /etc/group
echo "nogroup:x:65534:" >> /etc/group
mkdir -p /root /home/nobody && chown 65534:65534 /home/nobody
echo "strata-fast: starting agent"
exec /sbin/strata-agent --init --hostname strata-fast
`

var (
	fastOnce sync.Mutex
)

// Fast returns the fast fixture image: Debian cloud kernel, a busybox
// initramfs with the agent as init, and a 256 MiB ext4 data disk (qcow2,
// mounted at /data in the guest). It is built once and cached under
// CacheDir (keyed by the agent binary, busybox and the init script).
func Fast(t testing.TB) vm.Image {
	t.Helper()
	fastOnce.Lock()
	defer fastOnce.Unlock()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		Unavailable(t, "qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		Unavailable(t, "busybox-static not installed (%v)", err)
	}
	kdir, kver, err := testkernel.Get()
	if err != nil {
		Unavailable(t, "Debian cloud kernel: %v", err)
	}
	agent, err := buildAgent(t)
	if err != nil {
		Unavailable(t, "build guest agent: %v", err)
	}
	h := sha256.New()
	for _, f := range []string{agent, busybox} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	fmt.Fprintf(h, "%s\n%s\n%s", kver, initScript, strings.Join(Modules, ","))
	id := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(CacheDir, "fast-"+id)
	img := vm.Image{
		Disk:   filepath.Join(dir, "disk.qcow2"),
		Kernel: filepath.Join(kdir, "boot", "vmlinuz-"+kver),
		Initrd: filepath.Join(dir, "initrd.cpio"),
		// Not quiet: when a boot hangs, the console log in the error says where.
		// no_timer_check: under TCG on a loaded host the kernel's IO-APIC
		// timer check can fail and panic the boot (as in image.Cmdline).
		Cmdline: "console=ttyS0 panic=-1 no_timer_check rdinit=/init",
	}
	if _, err := os.Stat(img.Disk); err == nil {
		return img
	}
	tmp, err := os.MkdirTemp(CacheDir, "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := writeInitrd(filepath.Join(tmp, "initrd.cpio"), kdir, kver, agent, busybox); err != nil {
		t.Fatalf("fast fixture initrd: %v", err)
	}
	raw := filepath.Join(tmp, "disk.raw")
	if err := run("truncate", "-s", "256M", raw); err != nil {
		t.Fatal(err)
	}
	if err := run("mkfs.ext4", "-q", "-F", "-L", "data", raw); err != nil {
		Unavailable(t, "mkfs.ext4 (e2fsprogs): %v", err)
	}
	if err := run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(tmp, "disk.qcow2")); err != nil {
		Unavailable(t, "qemu-img (qemu-utils): %v", err)
	}
	os.Remove(raw)
	if err := os.Rename(tmp, dir); err != nil && !os.IsExist(err) {
		if _, err2 := os.Stat(img.Disk); err2 != nil {
			t.Fatalf("fast fixture: %v", err)
		}
	}
	return img
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// RepoRoot is the module root of this repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// buildAgent builds cmd/strata-agent as a static binary.
func buildAgent(t testing.TB) (string, error) {
	out := filepath.Join(t.TempDir(), "strata-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/strata-agent")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, b)
	}
	return out, nil
}

func writeInitrd(path, kdir, kver, agent, busybox string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := initramfs.NewWriter(f)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "tmp", "root", "lib/modules"} {
		_ = w.Dir(d, 0o755)
	}
	_ = w.CharDev("dev/console", 0o600, 5, 1)
	_ = w.CharDev("dev/null", 0o666, 1, 3)
	if err := w.CopyFile("bin/busybox", 0o755, busybox); err != nil {
		return err
	}
	_ = w.Symlink("bin/sh", "busybox")
	if err := w.CopyFile("sbin/strata-agent", 0o755, agent); err != nil {
		return err
	}
	kernelDir := filepath.Join(kdir, "lib", "modules", kver, "kernel")
	mods, err := moduleOrder(kernelDir, Modules)
	if err != nil {
		f.Close()
		return err
	}
	var order []string
	for _, m := range mods {
		if err := w.CopyFile("lib/modules/"+filepath.Base(m), 0o644, filepath.Join(kernelDir, m)); err != nil {
			return err
		}
		order = append(order, filepath.Base(m))
	}
	_ = w.File("lib/modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	_ = w.File("init", 0o755, []byte(initScript))
	if err := w.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
