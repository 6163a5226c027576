// Command strata runs Layerfiles in real virtual machines and snapshots the
// whole VM after every step, so the next run resumes from the deepest
// snapshot it can trust.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code (SPEC §5) through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withExit wraps err so that main exits with code.
func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "strata",
		Short: "Run Layerfiles in VMs with whole-VM snapshots after every step",
		Long: `strata runs Layerfiles — Dockerfile-like files that build a whole virtual
machine step by step — and snapshots the entire VM (disk, memory, running
processes) after each step. The next run restores the deepest snapshot it can
trust and executes only what changed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd())
	for _, add := range commandRegistry {
		root.AddCommand(add())
	}
	return root
}

// commandRegistry lets each command live in its own file: a file's init
// appends its constructor here.
var commandRegistry []func() *cobra.Command

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "strata:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(2) // bad flags or arguments
}
