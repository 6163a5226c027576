package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/expose"
	"github.com/strata-ci/strata/internal/vm"
)

func init() { commandRegistry = append(commandRegistry, newUpCmd) }

func newUpCmd() *cobra.Command {
	var port int
	cmd := &cobra.Command{
		Use:   "up [repository]",
		Short: "Restore the final state of Layerfiles that EXPOSE a website or port, and serve them until Ctrl-C",
		Long: `Up restores, in new VMs, the final snapshot of the last run of every Layerfile
of the repository folder (default: the current folder) that has EXPOSE WEBSITE
or EXPOSE TCP lines, and serves them on loopback until Ctrl-C. The EXPOSE
WEBSITE lines of one Layerfile form one site, routed by the longest matching
path prefix (with the prefix replaced by the rewrite argument, when given).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := openApp(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			runs, err := lastRuns(a.store, args)
			if err != nil {
				return err
			}
			var results []engine.Result
			for _, lr := range runs {
				if res := lr.res; res != nil && res.Passed() && (len(res.Website) > 0 || len(res.TCP) > 0) {
					results = append(results, *res)
				}
			}
			if len(results) == 0 {
				return withExit(2, fmt.Errorf("no Layerfile here has EXPOSE WEBSITE or EXPOSE TCP in a passing last run (run it first)"))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serveResults(ctx, a, results, port, cmd.OutOrStdout())
		},
	}
	cmd.Flags().IntVar(&port, "port", 0, "loopback port of the first website (default: any free port)")
	return cmd
}

// serveResults restores each result's final state and serves its websites
// and TCP ports until ctx ends.
func serveResults(ctx context.Context, a *app, results []engine.Result, port int, out io.Writer) error {
	unlock, err := a.store.LockShared()
	if err != nil {
		return withExit(3, err)
	}
	defer unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(results))
	portUsed := false
	for _, res := range results {
		if res.FinalLayer == "" {
			continue
		}
		layer, err := a.store.Get(res.FinalLayer)
		if err != nil {
			return withExit(3, err)
		}
		img, err := findImage(a.images, layer.Image)
		if err != nil {
			return withExit(3, err)
		}
		active, err := a.store.Prepare(layer.ID)
		if err != nil {
			return withExit(3, err)
		}
		defer a.store.Abort(active)
		fmt.Fprintf(out, "[%s] restoring the final state of %s...\n", res.Runner, res.Layerfile)
		m, err := a.hv.Restore(ctx, img, vm.SnapshotFiles{
			Disk: a.store.DiskPath(layer.ID), State: a.store.StatePath(layer.ID), MachineArgs: layer.MachineArgs,
		}, active.Overlay(), vm.Spec{MemoryMB: layer.MemoryMB, CPUs: layer.CPUs})
		if err != nil {
			return withExit(3, err)
		}
		defer m.Close()
		var routes []expose.Route
		for _, w := range res.Website {
			addr, err := m.Forward(ctx, w.Port)
			if err != nil {
				return withExit(3, err)
			}
			routes = append(routes, expose.Route{Path: w.Path, Rewrite: w.Rewrite, Scheme: w.Scheme, Backend: addr})
		}
		for _, t := range res.TCP {
			addr, err := m.Forward(ctx, t.GuestPort)
			if err != nil {
				return withExit(3, err)
			}
			fmt.Fprintf(out, "[%s] TCP port %d: %s\n", res.Runner, t.GuestPort, addr)
		}
		if len(routes) == 0 {
			continue
		}
		listen := "127.0.0.1:0"
		if port != 0 && !portUsed {
			listen, portUsed = "127.0.0.1:"+strconv.Itoa(port), true
		}
		wg.Add(1)
		go func(runner string) {
			defer wg.Done()
			errs <- expose.Serve(ctx, listen, routes, func(url string) {
				fmt.Fprintf(out, "[%s] website: %s\n", runner, url)
			})
		}(res.Runner)
	}
	fmt.Fprintln(out, "serving until Ctrl-C")
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-errs: // a site could not be served (port taken...)
	}
	if failed != nil {
		return withExit(3, failed)
	}
	wg.Wait()
	return nil
}
