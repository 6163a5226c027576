package vmtest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/strata-ci/strata/internal/vm"
)

// Sh runs script with bash -c (sh when bash is missing) in m and returns
// stdout and stderr together; a non-zero exit is an error.
func Sh(ctx context.Context, m vm.Machine, script string) (string, error) {
	var out bytes.Buffer
	code, err := m.Run(ctx, vm.Exec{Argv: []string{"sh", "-c", script}}, &out, &out)
	if err != nil {
		return out.String(), fmt.Errorf("%q: %w", script, err)
	}
	if code != 0 {
		return out.String(), fmt.Errorf("%q exited %d: %s", script, code, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// WaitDocker waits until dockerd answers in m.
func WaitDocker(ctx context.Context, m vm.Machine) error {
	_, err := Sh(ctx, m, "timeout 180 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.2; done'")
	return err
}

// WebPort is the guest port of web container i.
func WebPort(i int) int { return 8080 + i }

// StartWebContainers builds, in a guest running dockerd, an image
// "strata-bb" from the host's static busybox (no registry needed: the rootfs
// is copied in and `docker import`ed), then starts n containers web0..
// web<n-1>; container i serves "web<i>\n" over HTTP on guest port
// WebPort(i) (-p, so through docker's proxy and NAT).
// logf, when non-nil, receives progress lines with the elapsed time.
func StartWebContainers(ctx context.Context, m vm.Machine, n int, logf func(format string, args ...any)) error {
	start := time.Now()
	step := func(what string) {
		if logf != nil {
			logf("%s: %s", what, time.Since(start).Round(time.Millisecond))
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("host busybox-static: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	_ = tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now})
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: now})
	_, _ = tw.Write(bb)
	for _, l := range []string{"sh", "httpd", "cat", "echo", "sleep"} {
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := m.CopyIn(ctx, "/root/bbroot", io.Reader(&buf)); err != nil {
		return err
	}
	step("busybox rootfs copied in")
	if err := WaitDocker(ctx, m); err != nil {
		return err
	}
	step("dockerd answers")
	if _, err := Sh(ctx, m, "mkdir -p /root/bbroot/www && tar -C /root/bbroot -c . | docker import - strata-bb:latest >/dev/null"); err != nil {
		return err
	}
	step("image imported")
	for i := 0; i < n; i++ {
		script := fmt.Sprintf("docker run -d --security-opt apparmor=unconfined --name web%d -p %d:80 strata-bb:latest sh -c 'mkdir -p /www && echo web%d > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null",
			i, WebPort(i), i)
		if _, err := Sh(ctx, m, script); err != nil {
			return err
		}
		step(fmt.Sprintf("container web%d started", i))
	}
	err = CheckWebContainers(ctx, m, n)
	step("containers answer")
	return err
}

// CheckWebContainers checks, from inside the guest, that each web container
// is running and answers on its port.
func CheckWebContainers(ctx context.Context, m vm.Machine, n int) error {
	for i := 0; i < n; i++ {
		script := fmt.Sprintf("for t in $(seq 1 100); do out=$(curl -fsS --max-time 2 http://127.0.0.1:%d/) && break; sleep 0.2; done; echo \"$out\"", WebPort(i))
		out, err := Sh(ctx, m, script)
		if err != nil {
			return err
		}
		if want := fmt.Sprintf("web%d", i); strings.TrimSpace(out) != want {
			return fmt.Errorf("container web%d answered %q", i, out)
		}
	}
	return nil
}
