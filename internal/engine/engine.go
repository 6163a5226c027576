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
	// StatusCancelled: the run was interrupted (Ctrl-C) while the step ran.
	StatusCancelled = "cancelled"
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
	// Button asks a person to approve a BUTTON step; nil fails the step.
	Button func(ctx context.Context, runner, message string) error
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
	// Parent is the result of the Layerfile named by FROM <path>: this one
	// starts from its final state (files, processes, ENV, WORKDIR, USER),
	// and its cache keys chain from the parent's.
	Parent *Result
	// SplitPrefix runs only the steps before SPLIT (once, for all copies);
	// otherwise SplitIndex is this copy's SPLIT value (0..n-1).
	SplitPrefix bool
	SplitIndex  int
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
	// Website and TCP are what EXPOSE WEBSITE / EXPOSE TCP publish from
	// the final state.
	Website []Website `json:"website,omitempty"`
	TCP     []TCPPort `json:"tcp,omitempty"`
	// Split is n when the Layerfile has SPLIT n (set on the prefix result).
	Split int `json:"split,omitempty"`

	final *final // what a child Layerfile starts from
}

// Website is one EXPOSE WEBSITE line.
type Website struct {
	Scheme  string `json:"scheme"`
	Port    int    `json:"port"`
	Path    string `json:"path"`
	Rewrite string `json:"rewrite,omitempty"`
}

// TCPPort is one EXPOSE TCP line (HostPort 0: any free port).
type TCPPort struct {
	GuestPort int `json:"guest_port"`
	HostPort  int `json:"host_port,omitempty"`
}

// Passed reports whether the Layerfile passed (a skip of the remaining steps
// counts as passing, SPEC §2).
func (r Result) Passed() bool { return r.Status == Passed || r.Status == SkippedRemaining }
