// Package imagetest gives tests a real base image, built once and shared by
// the whole test suite.
package imagetest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/image"
)

// SharedImagesDir is where tests keep base images when STRATA_IMAGES is
// not set, so every test binary reuses the same build.
const SharedImagesDir = "/var/tmp/strata-test-images"

// Required reports whether tests must fail instead of skipping when
// something they need is missing (STRATA_E2E_REQUIRED=1).
func Required() bool { return os.Getenv("STRATA_E2E_REQUIRED") == "1" }

// SkipOrFail skips the test with reason, or fails it when
// STRATA_E2E_REQUIRED=1.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("STRATA_E2E_REQUIRED=1 but: %s", reason)
	}
	t.Skip(reason)
}

// NeedTools skips (or fails) the test unless the host tools to build and
// boot images are installed.
func NeedTools(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat(filepath.Join("/usr/sbin", tool)); err2 == nil {
				continue
			}
			if _, err2 := os.Stat(filepath.Join("/sbin", tool)); err2 == nil {
				continue
			}
			SkipOrFail(t, tool+" is not installed (apt-get install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs zstd)")
		}
	}
}

// Config returns the image config tests use: images in the shared dir
// ($STRATA_IMAGES, else SharedImagesDir), mirrors from the environment,
// agentPath as the agent.
func Config(t testing.TB, agentPath string) image.Config {
	t.Helper()
	dir := os.Getenv("STRATA_IMAGES")
	if dir == "" {
		dir = SharedImagesDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("images dir: %v", err)
	}
	return image.Config{
		Home:         t.TempDir(),
		ImagesDir:    dir,
		Mirror:       os.Getenv("STRATA_DEBIAN_MIRROR"),
		UbuntuMirror: os.Getenv("STRATA_UBUNTU_MIRROR"),
		AgentPath:    agentPath,
	}
}

// BuildAgent compiles ./cmd/strata-agent of this module as a static binary
// into a temp dir and returns its path.
func BuildAgent(t testing.TB) string {
	t.Helper()
	root := moduleRoot(t)
	out := filepath.Join(t.TempDir(), "strata-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/strata-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest agent: %v\n%s", err, msg)
	}
	return out
}

func moduleRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatalf("not inside the strata module")
	}
	return filepath.Dir(mod)
}

// Ensure returns vm/debian:12 with extraPackages installed and the guest
// agent built from this tree, building what is missing into the shared
// images dir (the first build takes a minute or two; run tests with
// -timeout 30m). It skips (or fails, with STRATA_E2E_REQUIRED=1) when QEMU
// or the build tools are missing. Older builds of the same image (another
// agent) made more than an hour ago are removed, so agent edits do not
// fill the disk.
func Ensure(t testing.TB, extraPackages ...string) image.Built {
	t.Helper()
	NeedTools(t)
	cfg := Config(t, BuildAgent(t))
	var log logWriter
	log.t = t
	b, err := image.Ensure(t.Context(), cfg, "vm/debian:12", extraPackages, &log)
	log.flush()
	if err != nil {
		t.Fatalf("ensure base image: %v", err)
	}
	prune(t, cfg, b)
	return b
}

// prune removes older builds of b's name and packages (a previous agent)
// created more than an hour ago.
func prune(t testing.TB, cfg image.Config, b image.Built) {
	all, err := image.List(cfg)
	if err != nil {
		return
	}
	for _, o := range all {
		if o.ID != b.ID && o.Name == b.Name && slices.Equal(o.Packages, b.Packages) &&
			time.Since(o.Created) > time.Hour {
			if err := image.Remove(cfg, o.ID); err != nil {
				t.Logf("prune old image %s: %v", o.ID, err)
			}
		}
	}
}

// logWriter sends whole lines to t.Log.
type logWriter struct {
	t   testing.TB
	buf bytes.Buffer
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			break
		}
		w.t.Log(strings.TrimRight(line, "\n"))
	}
	return len(p), nil
}

func (w *logWriter) flush() {
	if w.buf.Len() > 0 {
		w.t.Log(w.buf.String())
		w.buf.Reset()
	}
}
