package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/testkernel"
)

// testKernel returns the Debian cloud kernel the VM tests boot (fetched
// once), or skips (fails when STRATA_E2E_REQUIRED=1) when it cannot be had.
// The probe needs QEMU too: without it the test skips like every other VM
// test (fails when STRATA_E2E_REQUIRED=1).
func testKernel(t *testing.T) string {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("STRATA_E2E_REQUIRED") == "1" {
			t.Fatalf("required for end-to-end tests: "+format, args...)
		}
		t.Skipf(format, args...)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		unavailable("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	}
	dir, ver, err := testkernel.Get()
	if err != nil {
		unavailable("Debian cloud kernel: %v", err)
	}
	return filepath.Join(dir, "boot", "vmlinuz-"+ver)
}

func TestProbeInitramfsRunsUnderTCG(t *testing.T) {
	k := testKernel(t)
	v := runProbe(context.Background(), "qemu-system-x86_64", k, AccelTCG, 60*time.Second)
	if v.Accel != AccelTCG || !strings.Contains(v.Reason, "booted in") {
		t.Fatalf("probe under TCG: %+v", v)
	}
	t.Logf("%+v", v)
}

func TestDetectAccelCachesVerdict(t *testing.T) {
	k := testKernel(t)
	dir := t.TempDir()
	t0 := time.Now()
	a, reason, err := detectAccel(context.Background(), "qemu-system-x86_64", dir, k)
	if err != nil {
		t.Fatal(err)
	}
	first := time.Since(t0)
	t.Logf("verdict %s: %s (%s)", a, reason, first)
	a2, reason2, err := detectAccel(context.Background(), "qemu-system-x86_64", dir, k)
	if err != nil || a2 != a || !strings.HasSuffix(reason2, "(cached)") {
		t.Fatalf("second detect: %s %q %v, want cached %s", a2, reason2, err, a)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "accel-*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files %v", files)
	}
}
