package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/mask"
	"github.com/strata-ci/strata/internal/plan"
	"github.com/strata-ci/strata/internal/runenv"
	"github.com/strata-ci/strata/internal/schedule"
)

func init() { commandRegistry = append(commandRegistry, newRunCmd) }

type runFlags struct {
	output      string
	fresh       bool
	secrets     []string
	secretsFile string
	jobs        int
	noCacheDirs bool
	acceptBtns  bool
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [repository]",
		Short: "Run every Layerfile of a repository, reusing snapshots from earlier runs",
		Long: `Run finds every file named Layerfile below the repository folder (default: the
current folder), checks them all, and runs each in its own VM. After every step
the whole VM is snapshotted; the next run restores the deepest snapshot it can
trust and executes only from there.

Exit codes: 0 every Layerfile passed, 1 one failed, 2 bad Layerfile or flags,
3 infrastructure error (no QEMU, no space, a VM that died), 130 interrupted
(Ctrl-C; the running step is reported "cancelled").`,
		Example: `  strata run
  strata run examples/docker
  strata run --secret NPM_TOKEN --output json .`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := "."
			if len(args) == 1 {
				root = args[0]
			}
			return runRepository(cmd, root, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.output, "output", "auto", "output format: auto, plain or json (one JSON object per line)")
	fl.BoolVar(&f.fresh, "fresh", false, "ignore the state RUN REPEATABLE steps kept from earlier runs")
	fl.StringArrayVar(&f.secrets, "secret", nil, "a secret for SECRET ENV: NAME=VALUE, or NAME to read it from the environment (repeatable)")
	fl.StringVar(&f.secretsFile, "secrets-file", "", "file of NAME=VALUE lines with secrets for SECRET ENV")
	fl.IntVar(&f.jobs, "jobs", 0, "Layerfiles run at once (default: what the host's cores and memory allow)")
	fl.BoolVar(&f.noCacheDirs, "no-cache-dirs", false, "ignore CACHE directories")
	fl.BoolVar(&f.acceptBtns, "accept-buttons", false, "approve every BUTTON without asking")
	return cmd
}

// parseSecrets collects secret values from flags and a file.
func parseSecrets(flags []string, file string) (map[string]string, error) {
	out := map[string]string{}
	if file != "" {
		fh, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("secrets file: %w", err)
		}
		defer fh.Close()
		sc := bufio.NewScanner(fh)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("%s:%d: expected NAME=VALUE", file, n)
			}
			out[strings.TrimSpace(k)] = v
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("secrets file: %w", err)
		}
	}
	for _, s := range flags {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			env, found := os.LookupEnv(k)
			if !found {
				return nil, fmt.Errorf("--secret %s: no such environment variable (use --secret %s=VALUE)", k, k)
			}
			v = env
		}
		if k == "" {
			return nil, fmt.Errorf("--secret %q: expected NAME=VALUE or NAME", s)
		}
		out[k] = v
	}
	return out, nil
}

// runEvent is one line of --output json.
type runEvent struct {
	Event       string  `json:"event"`
	Layerfile   string  `json:"layerfile,omitempty"`
	Runner      string  `json:"runner,omitempty"`
	Index       *int    `json:"index,omitempty"`
	Line        int     `json:"line,omitempty"`
	Instruction string  `json:"instruction,omitempty"`
	Status      string  `json:"status,omitempty"`
	Seconds     float64 `json:"seconds"`
	Reason      string  `json:"reason,omitempty"`
	Message     string  `json:"message,omitempty"`
	Text        string  `json:"text,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// reporter prints events and output in the chosen format.
type reporter struct {
	mu     sync.Mutex
	w      io.Writer
	json   bool
	masker *mask.Masker
}

func (r *reporter) emit(ev runEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev.Instruction = r.masker.String(ev.Instruction)
	ev.Reason = r.masker.String(ev.Reason)
	ev.Message = r.masker.String(ev.Message)
	ev.Error = r.masker.String(ev.Error)
	if r.json {
		b, _ := json.Marshal(ev)
		fmt.Fprintf(r.w, "%s\n", b)
		return
	}
	prefix := "[" + ev.Runner + "]"
	switch ev.Event {
	case "step-start":
		fmt.Fprintf(r.w, "%s #%d %s  (%s)\n", prefix, *ev.Index, ev.Instruction, ev.Reason)
	case "step":
		switch ev.Status {
		case engine.StatusReused:
			fmt.Fprintf(r.w, "%s #%d reused   %s\n", prefix, *ev.Index, ev.Instruction)
		case engine.StatusSkipped:
			fmt.Fprintf(r.w, "%s #%d skipped  %s\n", prefix, *ev.Index, ev.Instruction)
		default:
			fmt.Fprintf(r.w, "%s #%d %-7s  %s  %.1fs\n", prefix, *ev.Index, ev.Status, ev.Instruction, ev.Seconds)
		}
	case "info":
		fmt.Fprintf(r.w, "%s %s\n", prefix, ev.Message)
	case "output":
		fmt.Fprintf(r.w, "%s | %s\n", prefix, strings.TrimRight(ev.Text, "\n"))
	case "layerfile-start":
		fmt.Fprintf(r.w, "%s %s: started\n", prefix, ev.Layerfile)
	case "layerfile":
		line := fmt.Sprintf("%s %s: %s in %.1fs", prefix, ev.Layerfile, ev.Status, ev.Seconds)
		if ev.Error != "" {
			line += ": " + ev.Error
		}
		fmt.Fprintln(r.w, line)
	case "run":
		fmt.Fprintf(r.w, "run %s in %.1fs\n", ev.Status, ev.Seconds)
	}
}

// lineWriter turns a runner's output stream into "output" events, one per
// line (masked by the reporter's masker before it is split).
type lineWriter struct {
	rep    *reporter
	runner string
	file   string
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.rep.emit(runEvent{Event: "output", Runner: w.runner, Layerfile: w.file, Text: lastSegment(w.buf[:i])})
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.rep.emit(runEvent{Event: "output", Runner: w.runner, Layerfile: w.file, Text: lastSegment(w.buf)})
		w.buf = nil
	}
}

// lastSegment is what a terminal shows of a line that redraws itself with
// carriage returns (progress counters): the text after the last one.
func lastSegment(line []byte) string {
	s := strings.TrimRight(string(line), "\r")
	if i := strings.LastIndexByte(s, '\r'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func runRepository(cmd *cobra.Command, root string, f runFlags) error {
	switch f.output {
	case "auto", "plain", "json":
	default:
		return withExit(2, fmt.Errorf("--output %q: expected auto, plain or json", f.output))
	}
	secrets, err := parseSecrets(f.secrets, f.secretsFile)
	if err != nil {
		return withExit(2, err)
	}
	masked := make([]string, 0, len(secrets))
	for _, v := range secrets {
		masked = append(masked, v)
	}
	rep := &reporter{w: cmd.OutOrStdout(), json: f.output == "json", masker: mask.New(masked)}
	start := time.Now()

	absRoot, err := filepath.Abs(root)
	if err != nil {
		return withExit(2, err)
	}
	if fi, err := os.Stat(absRoot); err != nil || !fi.IsDir() {
		return withExit(2, fmt.Errorf("%s is not a folder", root))
	}
	repo, diags, err := plan.Load(absRoot)
	if err != nil {
		return withExit(3, err)
	}
	for _, d := range diags {
		fmt.Fprintln(cmd.ErrOrStderr(), d.String())
	}
	if layerfile.HasErrors(diags) {
		rep.emit(runEvent{Event: "run", Status: "bad Layerfile", Seconds: time.Since(start).Seconds(), Error: fmt.Sprintf("%d error(s) in Layerfiles", countErrors(diags))})
		return withExit(2, fmt.Errorf("bad Layerfile: fix the errors above (strata lint shows them)"))
	}
	if len(repo.Files) == 0 {
		return withExit(2, fmt.Errorf("no Layerfile found below %s", root))
	}
	if err := checkSecretsGiven(repo, secrets); err != nil {
		return withExit(2, err)
	}
	if cfg, err := image.LoadConfig(); err == nil {
		if ds := imageDiagnostics(repo, cfg); len(ds) > 0 {
			for _, d := range ds {
				fmt.Fprintln(cmd.ErrOrStderr(), d.String())
			}
			rep.emit(runEvent{Event: "run", Status: "bad Layerfile", Seconds: time.Since(start).Seconds(), Error: fmt.Sprintf("%d error(s) in Layerfiles", len(ds))})
			return withExit(2, fmt.Errorf("bad Layerfile: fix the errors above (strata lint shows them)"))
		}
	}

	a, err := openApp(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	unlock, err := a.store.LockShared()
	if err != nil {
		return withExit(3, err)
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	info := runenv.Inspect(absRoot)
	jobID := runenv.NewJobID()
	jobs := f.jobs
	if jobs <= 0 {
		jobs = defaultJobs()
	}

	var prompt sync.Mutex
	button := func(ctx context.Context, runner, message string) error {
		if f.acceptBtns {
			rep.emit(runEvent{Event: "info", Runner: runner, Message: "BUTTON " + message + ": approved by --accept-buttons"})
			return nil
		}
		if !isTerminal(os.Stdin) {
			return fmt.Errorf("BUTTON %q needs approval: run strata in a terminal to answer it, or pass --accept-buttons", message)
		}
		prompt.Lock()
		defer prompt.Unlock()
		fmt.Fprintf(cmd.ErrOrStderr(), "[%s] %s — approve? [y/N] ", runner, message)
		answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a == "y" || a == "yes" {
			return nil
		}
		return fmt.Errorf("BUTTON %q was not approved", message)
	}

	runJob := func(ctx context.Context, j schedule.Job) engine.Result {
		out := &lineWriter{rep: rep, runner: j.Runner, file: j.Rel}
		maskedOut := rep.masker.Writer(out)
		cfg := &engine.Config{
			Store:        a.store,
			Hypervisor:   a.hv,
			ResolveImage: a.resolveImage,
			Salt:         a.salt,
			Secrets:      secrets,
			LookupEnv:    os.LookupEnv,
			Fresh:        f.fresh,
			NoCacheDirs:  f.noCacheDirs,
			Output:       maskedOut,
			Button:       button,
			Events: func(e engine.Event) {
				maskedOut.Flush()
				out.Flush()
				idx := e.Index
				rep.emit(runEvent{Event: e.Kind, Layerfile: e.Layerfile, Runner: e.Runner, Index: &idx, Line: e.Line,
					Instruction: e.Instruction, Status: e.Status, Seconds: e.Seconds, Reason: e.Reason, Message: e.Message})
			},
		}
		rep.emit(runEvent{Event: "layerfile-start", Layerfile: j.Rel, Runner: j.Runner})
		res := engine.Run(ctx, cfg, &engine.Job{
			RepoRoot: absRoot, File: j.File, Rel: j.Rel, Scope: info.Scope,
			Branch: info.Branch, DefaultBranch: info.DefaultBranch,
			Env:    runenv.Builtins(info, jobID, j.Runner, 0, "localhost"),
			Runner: j.Runner, Parent: j.Parent, SplitPrefix: j.SplitPrefix, SplitIndex: j.SplitIndex,
		})
		maskedOut.Flush()
		out.Flush()
		merged := label(j.File, "status") == "merge" && !j.SplitPrefix && hasSplit(j.File)
		if !(j.SplitPrefix && res.Passed() && res.Split > 0) && !merged {
			rep.emit(runEvent{Event: "layerfile", Layerfile: res.Layerfile, Runner: res.Runner, Status: res.Status, Seconds: res.Seconds, Error: res.Error})
		}
		return res
	}
	var results []engine.Result
	for _, runs := range schedule.Run(ctx, repo, schedule.Options{
		Jobs:       jobs,
		MemoryMB:   hostMemoryMB() - 2048,
		RunnerName: runnerName,
		Run:        runJob,
		Cancelled: func(res engine.Result) {
			rep.emit(runEvent{Event: "layerfile", Layerfile: res.Layerfile, Runner: res.Runner, Status: res.Status, Error: res.Error})
		},
	}) {
		results = append(results, runs...)
		// LABEL status=merge: the SPLIT copies are reported as one.
		if last := runs[len(runs)-1]; len(runs) > 1 && label(repo.File(last.Path), "status") == "merge" {
			merged := runs[1]
			for _, c := range runs[1:] {
				merged.Seconds = max(merged.Seconds, c.Seconds)
				if !c.Passed() {
					merged.Status, merged.Error = c.Status, c.Error
				}
			}
			rep.emit(runEvent{Event: "layerfile", Layerfile: merged.Layerfile, Runner: runs[0].Runner, Status: merged.Status, Seconds: merged.Seconds, Error: merged.Error})
		}
	}

	for _, res := range results {
		if res.Passed() && (len(res.Website) > 0 || len(res.TCP) > 0) {
			rep.emit(runEvent{Event: "info", Runner: res.Runner, Layerfile: res.Layerfile,
				Message: fmt.Sprintf("exposes %d website path(s) and %d TCP port(s): serve them with `strata up %s`", len(res.Website), len(res.TCP), root)})
		}
	}
	status, code := overall(results, ctx.Err() != nil)
	rep.emit(runEvent{Event: "run", Status: status, Seconds: time.Since(start).Seconds()})
	if code != 0 {
		return withExit(code, fmt.Errorf("run %s", status))
	}
	return nil
}

// checkSecretsGiven fails before any VM starts when a SECRET ENV name has
// no value.
func checkSecretsGiven(repo *plan.Repo, secrets map[string]string) error {
	var missing []string
	for _, f := range repo.Files {
		for _, ins := range f.Instructions {
			if ins.Kind != layerfile.SecretEnv {
				continue
			}
			for _, n := range ins.Names.Names {
				if _, ok := secrets[n]; !ok {
					missing = append(missing, fmt.Sprintf("%s (%s:%d)", n, repo.Rel(f.Path), ins.Pos.Line))
				}
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("secrets not given: %s; pass --secret NAME=VALUE, --secret NAME (from the environment) or --secrets-file", strings.Join(missing, ", "))
	}
	return nil
}

func countErrors(ds []layerfile.Diagnostic) int {
	n := 0
	for _, d := range ds {
		if d.Severity == layerfile.Error {
			n++
		}
	}
	return n
}

// runnerName is LABEL display_name, else the folder-derived name.
func runnerName(f *layerfile.File, rel string) string {
	if name := label(f, "display_name"); name != "" {
		return name
	}
	return runenv.RunnerName(rel)
}

func hasSplit(f *layerfile.File) bool {
	for _, ins := range f.Instructions {
		if ins.Kind == layerfile.Split {
			return true
		}
	}
	return false
}

// label is the value of the Layerfile's last LABEL key=..., or "".
func label(f *layerfile.File, key string) string {
	v := ""
	if f == nil {
		return v
	}
	for _, ins := range f.Instructions {
		if ins.Kind == layerfile.Label && ins.Label.Key == key {
			v = ins.Label.Value
		}
	}
	return v
}

// overall folds Layerfile results into the run status and exit code.
func overall(results []engine.Result, interrupted bool) (string, int) {
	worst := "passed"
	code := 0
	for _, r := range results {
		switch r.Status {
		case engine.Errored:
			worst, code = "error", 3
		case engine.Failed:
			if code != 3 {
				worst, code = "failed", 1
			}
		case engine.Cancelled:
			if code == 0 {
				worst, code = "cancelled", 1
			}
		}
	}
	if interrupted && code != 3 {
		// Ctrl-C: the shell's convention for a command ended by SIGINT.
		return "cancelled", 130
	}
	return worst, code
}

// hostMemoryMB is the host's RAM in MiB (0 if unknown).
func hostMemoryMB() int {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
}

// defaultJobs is how many VMs the host can run at once: one per core, and
// no more than memory allows at 2 GiB per VM plus headroom.
func defaultJobs() int {
	n := runtime.NumCPU()
	if byMem := hostMemoryMB() / 3072; byMem < n {
		n = byMem
	}
	return max(n, 1)
}
