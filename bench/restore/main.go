// Command restore measures whole-VM restore against a cold boot for a guest
// running dockerd and two containers (DESIGN.md, "restore/boot" and
// "snapshot pause"):
//
//	go run ./bench/restore [-mem 2048] [-cpus 2] [-restores 3]
//
// It ensures the vm/debian:12 image with docker.io (in $STRATA_IMAGES,
// default /var/tmp/strata-test-images), cold-boots it, starts dockerd and
// two containers, takes a step snapshot (reporting the guest pause), then
// restores that snapshot several times in new QEMU processes and prints the
// ratios.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/vm"
	"github.com/strata-ci/strata/internal/vm/vmtest"
)

func main() {
	mem := flag.Int("mem", 2048, "guest memory in MiB")
	cpus := flag.Int("cpus", 2, "guest vCPUs")
	restores := flag.Int("restores", 3, "number of restores to time (median is reported)")
	containers := flag.Int("containers", 2, "containers to start before the snapshot")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	if err := run(*mem, *cpus, *restores, *containers, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench/restore:", err)
		os.Exit(1)
	}
}

func run(mem, cpus, restores, containers int, keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("/var/tmp", "strata-bench-restore-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(work)
	}

	agent := filepath.Join(work, "strata-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", agent, "./cmd/strata-agent")
	cmd.Dir = vmtest.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build agent: %v: %s", err, out)
	}
	imagesDir := os.Getenv("STRATA_IMAGES")
	if imagesDir == "" {
		imagesDir = "/var/tmp/strata-test-images"
	}
	cfg := image.Config{Home: filepath.Join(work, "home"), ImagesDir: imagesDir,
		Mirror: os.Getenv("STRATA_DEBIAN_MIRROR"), AgentPath: agent}
	fmt.Println("ensuring image vm/debian:12 + docker.io ...")
	built, err := image.Ensure(ctx, cfg, "vm/debian:12", []string{"docker.io"}, os.Stderr)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	img := built.Image
	q, err := vm.NewQEMU(vm.QEMUOptions{CacheDir: filepath.Join(vmtest.CacheDir, "accel")})
	if err != nil {
		return err
	}
	accel, reason := q.Accel(ctx, img.Kernel)
	spec := vm.Spec{MemoryMB: mem, CPUs: cpus}
	fmt.Printf("QEMU %s, accel %s (%s), guest %d MiB / %d vCPUs\n", q.Version(), accel, reason, mem, cpus)

	// Cold: QEMU start -> agent answers -> dockerd + containers answer.
	t0 := time.Now()
	m, err := q.Boot(ctx, img, filepath.Join(work, "l0", "overlay.qcow2"), spec)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer m.Close()
	coldAgent := time.Since(t0)
	if err := vmtest.WaitDocker(ctx, m); err != nil {
		return err
	}
	coldDocker := time.Since(t0)
	if err := vmtest.StartWebContainers(ctx, m, containers, nil); err != nil {
		return err
	}
	coldAll := time.Since(t0)
	fmt.Printf("cold boot: agent answers %s, dockerd answers %s, %d containers answering %s\n",
		rd(coldAgent), rd(coldDocker), containers, rd(coldAll))

	layer := m.Overlay()
	state := filepath.Join(work, "l0", "state")
	snap, err := m.Snapshot(ctx, state, filepath.Join(work, "l1", "overlay.qcow2"))
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	fmt.Printf("snapshot: guest paused %s, complete after %s; state %.1f MiB + disk layer %.1f MiB on disk\n",
		snap.Pause, rd(snap.Total), mib(snap.StateBytes), mib(snap.DiskBytes))
	if st, ok := vm.LastMigration(m); ok {
		fmt.Printf("  QEMU: downtime %s, setup %s, migration total %s, %.1f MiB of RAM in the stream\n",
			st.Downtime, st.Setup, st.Total, mib(st.RAMWritten))
	}
	// A second step snapshot of the same process (what every later step
	// of a Layerfile pays).
	if _, err := vmtest.Sh(ctx, m, "echo step2 > /root/step2 && sync"); err != nil {
		return err
	}
	snap2, err := m.Snapshot(ctx, filepath.Join(work, "l1", "state"), filepath.Join(work, "l2", "overlay.qcow2"))
	if err != nil {
		return fmt.Errorf("second snapshot: %w", err)
	}
	fmt.Printf("second snapshot: guest paused %s, complete after %s; state %.1f MiB + disk layer %.1f MiB\n",
		snap2.Pause, rd(snap2.Total), mib(snap2.StateBytes), mib(snap2.DiskBytes))
	if st, ok := vm.LastMigration(m); ok {
		fmt.Printf("  QEMU: downtime %s, setup %s, migration total %s\n", st.Downtime, st.Setup, st.Total)
	}
	m.Close()

	files := vm.SnapshotFiles{Disk: layer, State: state, MachineArgs: q.MachineArgs(img, spec)}
	var times, loads, checks []time.Duration
	for i := 0; i < restores; i++ {
		t := time.Now()
		r, err := q.Restore(ctx, img, files, filepath.Join(work, fmt.Sprintf("r%d", i), "overlay.qcow2"), spec)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		d := time.Since(t)
		tm, _ := vm.MachineTimings(r)
		if err := vmtest.CheckWebContainers(ctx, r, containers); err != nil {
			r.Close()
			return fmt.Errorf("after restore: %w", err)
		}
		checks = append(checks, time.Since(t))
		times = append(times, d)
		loads = append(loads, tm.StateLoaded)
		fmt.Printf("restore %d: agent answers %s (QEMU start -> state loaded %s), containers answering %s\n",
			i+1, rd(d), rd(tm.StateLoaded), rd(time.Since(t)))
		r.Close()
	}
	restore := median(times)
	fmt.Println()
	fmt.Printf("restore/boot (to agent answers, median of %d):           %.4f  (%s / %s)\n", restores, ratio(restore, coldAll), rd(restore), rd(coldAll))
	fmt.Printf("restore/boot-to-agent-only:                              %.4f  (%s / %s)\n", ratio(restore, coldAgent), rd(restore), rd(coldAgent))
	fmt.Printf("state load (QEMU start -> guest running), median:        %s\n", rd(median(loads)))
	fmt.Printf("restore to containers answering, median:                 %s\n", rd(median(checks)))
	fmt.Printf("snapshot pause / restore, first snapshot:                %.4f  (%s / %s)\n", ratio(snap.Pause, restore), snap.Pause, rd(restore))
	fmt.Printf("snapshot pause / restore, second snapshot:               %.4f  (%s / %s)\n", ratio(snap2.Pause, restore), snap2.Pause, rd(restore))
	fmt.Printf("snapshot bytes on disk:                                  %.1f MiB (state %.1f + layer %.1f)\n",
		mib(snap.StateBytes+snap.DiskBytes), mib(snap.StateBytes), mib(snap.DiskBytes))
	return nil
}

func rd(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
