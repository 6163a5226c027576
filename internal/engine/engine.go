// Package engine runs one Layerfile against a Machine: it computes every
// step's cache key, restores the deepest snapshot it can trust (or boots
// the base image), executes the remaining steps and snapshots the VM after
// each (SPEC §3).
package engine

import (
	"context"
	"io"
	"time"

	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/vm"
)

// Step statuses reported in events.
const (
	StatusReused  = "reused"
	StatusRan     = "ran"
	StatusFailed  = "failed"
	StatusSkipped = "skipped"
)

// Layerfile statuses (SPEC §5).
const (
	Passed           = "passed"
	Failed           = "failed"
	SkippedRemaining = "skipped remaining"
	Cancelled        = "cancelled"
	Errored          = "error"
)

// ImageRef is a resolved base image.
type ImageRef struct {
	ID    string
	Image vm.Image
}

// Config is what the engine needs from its surroundings; one Config serves
// many jobs.
type Config struct {
	Store      *store.Store
	Hypervisor vm.Hypervisor
	// ResolveImage turns "vm/debian:12" into a built image, building it if
	// needed (progress goes to the writer).
	ResolveImage func(ctx context.Context, name string, progress io.Writer) (ImageRef, error)
	// Salt keys secret digests (see cachekey.SecretDigest).
	Salt []byte
	// Secrets are the values SECRET ENV names refer to.
	Secrets map[string]string
	// LookupEnv gives BUILD ENV values (the host environment).
	LookupEnv func(string) (string, bool)
	// Fresh ignores RUN REPEATABLE state.
	Fresh bool
	// NoCacheDirs ignores CACHE directories.
	NoCacheDirs bool
	// CPUs per VM (default 2).
	CPUs int
	// Events receives progress; it must not block for long.
	Events func(Event)
	// Output receives the live output of running steps. The caller masks
	// secrets.
	Output io.Writer
}

// Job is one Layerfile to run.
type Job struct {
	RepoRoot string
	File     *layerfile.File
	// Rel is the Layerfile's path relative to RepoRoot ("Layerfile",
	// "svc/api/Layerfile").
	Rel string
	// Scope identifies the repository (REPEATABLE state and CACHE content
	// are kept per scope and Layerfile).
	Scope string
	// Branch and DefaultBranch choose the REPEATABLE state.
	Branch, DefaultBranch string
	// Env are the built-in variables of SPEC §4 (KEY=VALUE).
	Env []string
	// Runner is the runner's name (RUNNER_ID).
	Runner string
}

// Event is one progress report.
type Event struct {
	Kind        string // "step-start", "step", "info"
	Layerfile   string
	Runner      string
	Index       int // 1-based step number (FROM is step 0)
	Line        int
	Instruction string
	Status      string
	Reason      string
	Seconds     float64
	Message     string
}

// StepReport is the outcome of one step, kept for `strata explain`.
type StepReport struct {
	Index       int               `json:"index"`
	Line        int               `json:"line"`
	Instruction string            `json:"instruction"`
	Key         string            `json:"key"`
	Status      string            `json:"status"`
	Reason      string            `json:"reason,omitempty"`
	Seconds     float64           `json:"seconds"`
	Layer       string            `json:"layer,omitempty"`
	BuildEnv    map[string]string `json:"build_env,omitempty"` // name -> digest of value
	Secrets     map[string]string `json:"secrets,omitempty"`   // name -> keyed digest
}

// Result is the outcome of one Layerfile.
type Result struct {
	Layerfile string `json:"layerfile"`
	// Path is the Layerfile's absolute path on the host.
	Path    string       `json:"path"`
	Runner  string       `json:"runner"`
	Status  string       `json:"status"`
	Error   string       `json:"error,omitempty"`
	Steps   []StepReport `json:"steps"`
	Seconds float64      `json:"seconds"`
	// FinalLayer is the snapshot of the Layerfile's final state, if any.
	FinalLayer string    `json:"final_layer,omitempty"`
	Started    time.Time `json:"started"`
}
