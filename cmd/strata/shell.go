package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/vm"
)

func init() { commandRegistry = append(commandRegistry, newShellCmd) }

func newShellCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "shell <layerfile> [step-number|checkpoint-name]",
		Short: "Open a shell in a VM restored at a step of the last run (thrown away on exit)",
		Long: `Shell restores the snapshot taken after a step of the Layerfile's last run —
the final state by default, a step number, or a CHECKPOINT name — in a new VM
and opens an interactive bash in it. Nothing you do there is kept.`,
		Example: `  strata shell examples/docker
  strata shell examples/docker/Layerfile 3
  strata shell . after-deps`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			at := ""
			if len(args) == 2 {
				at = args[1]
			}
			return runShell(cmd, args[0], at)
		},
	}
}

func runShell(cmd *cobra.Command, lfPath, at string) error {
	abs, err := filepath.Abs(lfPath)
	if err != nil {
		return withExit(2, err)
	}
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		abs = filepath.Join(abs, "Layerfile")
	}
	a, err := openApp(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	var last *engine.Result
	a.store.Runs(func(load func(any) error) bool {
		var r engine.Result
		// A SPLIT Layerfile's prefix run (Split > 0) stops before the
		// split: the copies hold its final states.
		if load(&r) == nil && r.Path == abs && r.Split == 0 {
			last = &r
			return false
		}
		return true
	})
	if last == nil {
		return withExit(2, fmt.Errorf("%s has not been run yet: run it with strata run first", lfPath))
	}
	layerID, err := pickLayer(a.store, last, at)
	if err != nil {
		return withExit(2, err)
	}
	layer, err := a.store.Get(layerID)
	if err != nil {
		return withExit(3, err)
	}
	img, err := findImage(a.images, layer.Image)
	if err != nil {
		return withExit(3, err)
	}
	unlock, err := a.store.LockShared()
	if err != nil {
		return withExit(3, err)
	}
	defer unlock()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
	defer stop()

	active, err := a.store.Prepare(layerID)
	if err != nil {
		return withExit(3, err)
	}
	defer a.store.Abort(active)
	fmt.Fprintf(cmd.ErrOrStderr(), "restoring %s (step %d: %s)...\n", layerID[:12], layer.Step, layer.Instruction)
	m, err := a.hv.Restore(ctx, img, vm.SnapshotFiles{
		Disk: a.store.DiskPath(layerID), State: a.store.StatePath(layerID), MachineArgs: layer.MachineArgs,
	}, active.Overlay(), vm.Spec{MemoryMB: layer.MemoryMB, CPUs: layer.CPUs})
	if err != nil {
		return withExit(3, err)
	}
	defer m.Close()

	restoreTerm := makeRaw(int(os.Stdin.Fd()))
	defer restoreTerm()
	code, err := m.Run(context.Background(), vm.Exec{
		Argv:  []string{"/bin/bash", "-l"},
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=" + envOr("TERM", "xterm"), "LANG=C.UTF-8"},
		Dir:   "/root",
		Stdin: os.Stdin,
		TTY:   isTerminal(os.Stdin),
	}, os.Stdout, os.Stderr)
	restoreTerm()
	if err != nil {
		return withExit(3, err)
	}
	if code != 0 {
		return withExit(1, fmt.Errorf("shell exited with %d", code))
	}
	return nil
}

// pickLayer finds the snapshot for a step number or checkpoint name of a
// run ("" = the final state).
func pickLayer(st *store.Store, r *engine.Result, at string) (string, error) {
	if at == "" {
		if r.FinalLayer == "" {
			return "", fmt.Errorf("the last run of %s left no snapshot", r.Layerfile)
		}
		return r.FinalLayer, nil
	}
	if n, err := strconv.Atoi(at); err == nil {
		for _, s := range r.Steps {
			if s.Index != n {
				continue
			}
			if s.Layer != "" {
				return s.Layer, nil
			}
			if c := st.Candidates(s.Key); len(c) > 0 {
				return c[0].ID, nil
			}
			return "", fmt.Errorf("step %d has no snapshot (CHECKPOINT disabled, or it did not run)", n)
		}
		return "", fmt.Errorf("%s has no step %d", r.Layerfile, n)
	}
	var found string
	_ = st.Walk(func(l store.Layer) error {
		if l.Checkpoint == at && l.Layerfile == r.Layerfile {
			found = l.ID // Walk is oldest first: the newest wins
		}
		return nil
	})
	if found == "" {
		return "", fmt.Errorf("no checkpoint named %q for %s", at, r.Layerfile)
	}
	return found, nil
}

func findImage(cfg image.Config, id string) (vm.Image, error) {
	all, err := image.List(cfg)
	if err != nil {
		return vm.Image{}, err
	}
	for _, b := range all {
		if b.ID == id {
			return b.Image, nil
		}
	}
	return vm.Image{}, fmt.Errorf("base image %s is no longer in the image store (removed?); run the Layerfile again", id)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// makeRaw puts a terminal in raw mode and returns the function that
// restores it (a no-op when fd is not a terminal).
func makeRaw(fd int) func() {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return func() {}
	}
	done := false
	return func() {
		if !done {
			_ = unix.IoctlSetTermios(fd, unix.TCSETS, old)
			done = true
		}
	}
}
