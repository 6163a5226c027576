package vm_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/image/imagetest"
	"github.com/strata-ci/strata/internal/vm"
	"github.com/strata-ci/strata/internal/vm/vmtest"
)

// TestDockerContainerSurvivesRestore boots the real Debian image with
// docker.io, starts a container, snapshots, restores in a new QEMU process
// and checks that the container still runs and answers, from the guest and
// from the host through a port forward.
func TestDockerContainerSurvivesRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("boots the Debian image with dockerd (about a minute under TCG)")
	}
	built := imagetest.Ensure(t, "docker.io")
	img := built.Image
	q := vmtest.QEMU(t)
	spec := vm.Spec{MemoryMB: 2048, CPUs: 2}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t0 := time.Now()
	m, err := q.Boot(ctx, img, filepath.Join(dir, "l0", "overlay.qcow2"), spec)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	defer m.Close()
	t.Logf("boot to agent: %s", time.Since(t0))
	if err := vmtest.StartWebContainers(ctx, m, 1, t.Logf); err != nil {
		t.Fatalf("start container: %v\n%s", err, vm.ConsoleLog(m))
	}
	t.Logf("dockerd + container up: %s", time.Since(t0))

	layer := m.Overlay()
	state := filepath.Join(dir, "l0", "state")
	res, err := m.Snapshot(ctx, state, filepath.Join(dir, "l1", "overlay.qcow2"))
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Logf("snapshot: pause %s, total %s, state %d MB, layer %d MB", res.Pause, res.Total, res.StateBytes>>20, res.DiskBytes>>20)
	m.Close()

	t1 := time.Now()
	r, err := q.Restore(ctx, img, vm.SnapshotFiles{Disk: layer, State: state, MachineArgs: q.MachineArgs(img, spec)},
		filepath.Join(dir, "r1", "overlay.qcow2"), spec)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	defer r.Close()
	t.Logf("restore to agent: %s", time.Since(t1))
	out, err := vmtest.Sh(ctx, r, "docker ps --format '{{.Names}} {{.Status}}'")
	if err != nil || !strings.HasPrefix(out, "web0 Up") {
		t.Fatalf("docker ps after restore: %q %v", out, err)
	}
	if err := vmtest.CheckWebContainers(ctx, r, 1); err != nil {
		t.Fatalf("container after restore: %v", err)
	}
	addr, err := r.Forward(ctx, vmtest.WebPort(0))
	if err != nil {
		t.Fatal(err)
	}
	if body := httpGet(t, "http://"+addr+"/"); body != "web0\n" {
		t.Fatalf("container through host forward: %q", body)
	}
}
