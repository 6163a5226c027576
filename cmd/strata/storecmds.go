package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/plan"
	"github.com/strata-ci/strata/internal/runenv"
	"github.com/strata-ci/strata/internal/store"
)

func init() {
	commandRegistry = append(commandRegistry, newExplainCmd, newLsCmd, newGCCmd)
}

// openStore opens the store without needing QEMU.
func openStore() (*store.Store, error) {
	cfg, err := image.LoadConfig()
	if err != nil {
		return nil, withExit(2, err)
	}
	st, err := store.Open(filepath.Join(cfg.Home, "store"))
	if err != nil {
		return nil, withExit(3, err)
	}
	return st, nil
}

func newExplainCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "explain [repository]",
		Short: "Say why each step of the last run ran or was reused",
		Long: `Explain prints, for every Layerfile of the repository folder (default: the
current folder), each step of its last run: reused, ran or failed, how long it
took, and why it ran (no snapshot yet, this line changed, a line above changed,
file X changed, BUILD ENV Y changed, --fresh ...).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore()
			if err != nil {
				return err
			}
			runs, err := lastRuns(st, args)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, lr := range runs {
				rel, res := lr.rel, lr.res
				if res == nil {
					fmt.Fprintf(out, "%s: not run yet\n", rel)
					continue
				}
				fmt.Fprintf(out, "%s (%s): %s in %.1fs, %s\n", rel, res.Runner, res.Status, res.Seconds, res.Started.Local().Format(time.DateTime))
				if res.Error != "" {
					fmt.Fprintf(out, "  error: %s\n", res.Error)
				}
				tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
				for _, s := range res.Steps {
					why := s.Reason
					if s.Status == engine.StatusReused && why == "" {
						why = "snapshot matches: same instructions above, same files read"
					}
					fmt.Fprintf(tw, "  #%d\tline %d\t%s\t%.1fs\t%s\t%s\n", s.Index, s.Line, s.Status, s.Seconds, truncate(s.Instruction, 60), why)
				}
				tw.Flush()
			}
			return nil
		},
	}
}

// lastRun is a Layerfile of the repository and its last run (nil: none).
type lastRun struct {
	rel string
	res *engine.Result
}

// lastRuns discovers the Layerfiles of the repository folder named by args
// (default: the current folder) and loads each one's last run report.
func lastRuns(st *store.Store, args []string) ([]lastRun, error) {
	root := "."
	if len(args) == 1 {
		root = args[0]
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, withExit(2, err)
	}
	paths, err := plan.Discover(abs)
	if err != nil {
		return nil, withExit(2, err)
	}
	if len(paths) == 0 {
		return nil, withExit(2, fmt.Errorf("no Layerfile found below %s", root))
	}
	scope := runenv.Inspect(abs).Scope
	var out []lastRun
	for _, p := range paths {
		rel, _ := filepath.Rel(abs, p)
		lr := lastRun{rel: filepath.ToSlash(rel)}
		var res engine.Result
		if st.LoadRun(engine.RunKey(scope, lr.rel), &res) == nil {
			lr.res = &res
		}
		out = append(out, lr)
	}
	return out, nil
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func newLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List the snapshots in the store, per Layerfile and step",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openStore()
			if err != nil {
				return err
			}
			var layers []store.Layer
			if err := st.Walk(func(l store.Layer) error { layers = append(layers, l); return nil }); err != nil {
				return withExit(3, err)
			}
			cwd, _ := os.Getwd()
			where := func(l store.Layer) string {
				if l.Repository == "" {
					return l.Layerfile
				}
				p := filepath.Join(l.Repository, l.Layerfile)
				if rel, err := filepath.Rel(cwd, p); err == nil && cwd != "" && !strings.HasPrefix(rel, "..") {
					return rel
				}
				return p
			}
			sort.SliceStable(layers, func(i, j int) bool {
				if wi, wj := where(layers[i]), where(layers[j]); wi != wj {
					return wi < wj
				}
				return layers[i].Step < layers[j].Step
			})
			refs := st.RepeatableRefs()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SNAPSHOT\tLAYERFILE\tSTEP\tDISK\tMEMORY\tAGE\tINSTRUCTION")
			var total int64
			for _, l := range layers {
				ins := truncate(l.Instruction, 50)
				if refs[l.ID] {
					ins += "  [repeatable state]"
				}
				if l.Checkpoint != "" {
					ins += "  [checkpoint " + l.Checkpoint + "]"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", l.ID[:12], where(l), l.Step, humanBytes(l.DiskBytes), humanBytes(l.StateBytes), age(l.Created), ins)
				total += l.DiskBytes + l.StateBytes
			}
			tw.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d snapshots, %s\n", len(layers), humanBytes(total))
			return nil
		},
	}
}

func newGCCmd() *cobra.Command {
	var maxSize string
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove unfinished snapshots, then the least recently used until the store fits",
		Long: `gc removes what crashed or cancelled runs left half-written, then removes the
least recently used snapshots (newest layers first within a chain, since
a layer others are built on cannot go before them) until the store is no larger
than --max-size. It waits for running jobs: never removes what a run uses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, err := parseSize(maxSize)
			if err != nil {
				return withExit(2, fmt.Errorf("--max-size: %w", err))
			}
			st, err := openStore()
			if err != nil {
				return err
			}
			unlock, err := st.TryLockExclusive()
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "gc: waiting for running jobs to finish...")
				if unlock, err = st.LockExclusive(); err != nil {
					return withExit(3, err)
				}
			}
			defer unlock()
			res, err := st.GC(limit)
			if err != nil {
				return withExit(3, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d unfinished and %d snapshots, freed %s; store now %s\n",
				res.Unfinished, res.Removed, humanBytes(res.Freed), humanBytes(res.Size))
			if res.Unreadable > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "gc: %d snapshot(s) have unreadable meta.json under %s; no snapshot was removed (their parents are unknown): remove those layer folders by hand\n",
					res.Unreadable, filepath.Join(st.Root(), "layers"))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&maxSize, "max-size", "20G", "the store's size limit (K, M, G, T suffixes)")
	return cmd
}

func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(strings.TrimSuffix(strings.ToUpper(s), "B")))
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size like 500M or 20G", s)
	}
	return int64(v * float64(mult)), nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
