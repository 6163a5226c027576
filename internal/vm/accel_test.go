package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testKernel returns the Debian cloud kernel cached by vmtest, or skips.
func testKernel(t *testing.T) string {
	t.Helper()
	m, _ := filepath.Glob("/var/tmp/strata-test-kernel/*/boot/vmlinuz-*")
	if len(m) == 0 {
		if os.Getenv("STRATA_E2E_REQUIRED") == "1" {
			t.Fatal("no test kernel under /var/tmp/strata-test-kernel (run a vmtest fixture first)")
		}
		t.Skip("no test kernel under /var/tmp/strata-test-kernel")
	}
	return m[0]
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
