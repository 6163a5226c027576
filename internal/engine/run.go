package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/repofiles"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/version"
	"github.com/strata-ci/strata/internal/vm"
)

// runner executes one job.
type runner struct {
	cfg  *Config
	job  *Job
	plan *plan
	img  ImageRef
	spec vm.Spec
	args string
	prev *Result // the previous run of this Layerfile, for reasons

	m      vm.Machine
	active *store.Active
	// base is the committed layer the VM state equals when clean is true
	// ("" with clean means the pristine base image).
	base      string
	clean     bool
	baseDepth int              // qcow2 chain depth of base
	pending   *pendingSnapshot // being saved in the background

	owners map[string]repofiles.Owner
	// cacheGen is the CACHE content generation the guest holds per
	// directory; cacheFP the content fingerprint last saved or loaded.
	cacheGen   map[string]int64
	cacheFP    map[string]string
	cacheReady map[string]bool // CACHE dirs known to exist in this VM
	result     Result
}

// Run runs one Layerfile to the end and returns its result. It never
// panics on bad input; infrastructure failures give status "error".
func Run(ctx context.Context, cfg *Config, job *Job) Result {
	start := time.Now()
	r := &runner{cfg: cfg, job: job, owners: map[string]repofiles.Owner{}}
	r.result = Result{Layerfile: job.Rel, Path: filepath.Join(job.RepoRoot, filepath.FromSlash(job.Rel)), Runner: job.Runner, Started: start.UTC()}
	err := r.run(ctx)
	r.close()
	r.result.Seconds = time.Since(start).Seconds()
	if err != nil {
		r.result.Error = err.Error()
		if r.result.Status == "" {
			r.result.Status = Errored
			if ctx.Err() != nil {
				r.result.Status = Cancelled
			}
		}
	}
	if r.plan != nil {
		_ = cfg.Store.SaveRun(runKey(job), r.result)
	}
	return r.result
}

// stepError is a step that failed in the guest (the Layerfile failed, not
// the infrastructure).
type stepError struct {
	step *step
	err  error
}

func (e *stepError) Error() string {
	return fmt.Sprintf("step %d (line %d) %s: %v", e.step.index, e.step.ins.Pos.Line, e.step.ins.Text, e.err)
}

func (r *runner) run(ctx context.Context) error {
	cfg, job := r.cfg, r.job
	f := job.File
	if len(f.Instructions) == 0 || f.Instructions[0].From == nil {
		r.result.Status = Errored
		return fmt.Errorf("%s: no FROM", job.Rel)
	}
	// MEMORY must be known before keys: it is part of the VM shape.
	r.spec = vm.Spec{MemoryMB: 2048, CPUs: cfg.CPUs}
	for _, ins := range f.Instructions {
		if ins.Kind == layerfile.Memory {
			r.spec.MemoryMB = int(ins.Memory.Bytes >> 20)
		}
	}
	if r.spec.CPUs == 0 {
		r.spec.CPUs = 2
	}
	if pr := job.Parent; pr != nil {
		if pr.final == nil || !pr.Passed() {
			r.result.Status = Cancelled
			return fmt.Errorf("parent %s did not pass", pr.Layerfile)
		}
		memorySet := r.spec.MemoryMB != 2048
		if memorySet && r.spec.MemoryMB != pr.final.spec.MemoryMB {
			r.result.Status = Errored
			return fmt.Errorf("%s: MEMORY %dM differs from the parent's %dM: a child runs in a copy of the parent's VM", job.Rel, r.spec.MemoryMB, pr.final.spec.MemoryMB)
		}
		r.img, r.spec, r.args = pr.final.img, pr.final.spec, pr.final.args
	} else {
		from := f.Instructions[0].From
		img, err := cfg.ResolveImage(ctx, from.Image, r.output())
		if err != nil {
			return fmt.Errorf("base image %s: %w", from.Image, err)
		}
		r.img = img
		r.args = cfg.Hypervisor.MachineArgs(img.Image, r.spec)
	}
	digests := repofiles.NewDigester(job.RepoRoot, filepath.Join(cfg.Store.Root(), "statcache", safeFile(job.Scope)+".json"))
	img := r.img
	p, err := prepare(cfg, job, img.ID, r.args, digests)
	if err != nil {
		// A COPY of a missing file, a secret not given...: the
		// Layerfile fails before any VM starts.
		r.result.Status = Failed
		return err
	}
	p.base.img, p.base.spec, p.base.args = r.img, r.spec, r.args
	for _, st := range p.steps {
		switch w := st.ins.Website; {
		case w != nil:
			r.result.Website = append(r.result.Website, Website{Scheme: w.Scheme, Port: w.Port, Path: w.Path, Rewrite: w.Rewrite})
		case st.ins.TCP != nil:
			r.result.TCP = append(r.result.TCP, TCPPort{GuestPort: st.ins.TCP.GuestPort, HostPort: st.ins.TCP.HostPort})
		}
	}
	r.plan = p
	r.result.Split = p.split
	defer digests.Save()
	defer func() {
		if r.result.Passed() {
			fin := p.finalOf()
			fin.layer = r.result.FinalLayer
			r.result.final = &fin
		}
	}()

	var prev Result
	if cfg.Store.LoadRun(runKey(job), &prev) == nil {
		r.prev = &prev
	}

	restoreAt, restoreLayer := r.deepestReusable()
	if restoreAt == 0 {
		// Leading steps that only set host-side state (ENV, BUILD ENV...)
		// need no snapshot: they are reused when the last run had them.
		for restoreAt < len(p.steps) && r.sameAsPrevious(p.steps[restoreAt]) {
			restoreAt++
		}
	}
	for _, s := range p.steps[:restoreAt] {
		// A BUTTON guards what follows it: when anything after it runs
		// again, a person approves again.
		if s.ins.Kind == layerfile.Button && restoreAt < len(p.steps) && !r.beforeSplit(s) {
			if err := r.askButton(ctx, s); err != nil {
				r.report(s, StatusFailed, "a step below it runs", 0, "")
				r.skipRest(s)
				r.result.Status = Failed
				return err
			}
		}
		r.report(s, StatusReused, "", 0, "")
	}
	if restoreLayer.ID != "" {
		r.base, r.clean = restoreLayer.ID, true
		r.result.FinalLayer = restoreLayer.ID
		cfg.Store.Touch(restoreLayer.ID)
	} else {
		r.base, r.clean = p.base.layer, true // the parent's final state, or the image
		r.result.FinalLayer = p.base.layer
	}

	// A RUN REPEATABLE step resumes from its own saved state, which holds
	// everything the steps above it did in its last run. When only COPY and
	// other steps that merely place files or set state stand between the
	// restore point and it, they need not run: putting today's files in
	// place in that state is the same as running them.
	if k, ok := r.repeatableJump(restoreAt); ok {
		for _, s := range p.steps[restoreAt:k] {
			r.report(s, StatusReused, fmt.Sprintf("held by the RUN REPEATABLE state of line %d; today's files are put in place", p.steps[k].ins.Pos.Line), 0, "")
		}
		restoreAt = k
		r.base, r.clean = p.base.layer, true
	}

	var firstRan *step
	for _, s := range p.steps[restoreAt:] {
		reason := r.reasonFor(s, firstRan)
		r.emit(Event{Kind: "step-start", Index: s.index, Line: s.ins.Pos.Line, Instruction: s.ins.Text, Reason: reason})
		t0 := time.Now()
		layer, err := r.execute(ctx, s)
		secs := time.Since(t0).Seconds()
		if err != nil {
			if ctx.Err() != nil {
				// Interrupted: whatever the step returned, it did not fail.
				r.report(s, StatusCancelled, reason, secs, "")
				r.skipRest(s)
				r.result.Status = Cancelled
				return err
			}
			r.report(s, StatusFailed, reason, secs, "")
			r.skipRest(s)
			var se *stepError
			if errors.As(err, &se) {
				r.result.Status = Failed
			} else {
				r.result.Status = Errored
			}
			return err
		}
		if firstRan == nil {
			firstRan = s
		}
		r.report(s, StatusRan, reason, secs, layer)
		if s.skip {
			if err := r.finalSnapshot(ctx, s); err != nil {
				return err
			}
			r.result.Status = SkippedRemaining
			return nil
		}
	}
	last := p.steps
	if len(last) > 0 && last[len(last)-1].skip && restoreAt == len(last) {
		r.result.Status = SkippedRemaining
		return nil
	}
	if len(p.steps) > 0 {
		if err := r.finalSnapshot(ctx, p.steps[len(p.steps)-1]); err != nil {
			return err
		}
	}
	r.result.Status = Passed
	return nil
}

// finalSnapshot makes sure the state after the last step run is a
// committed snapshot (children, `shell` and `up` start from it).
func (r *runner) finalSnapshot(ctx context.Context, last *step) error {
	if !r.clean {
		if _, err := r.snapshot(ctx, last); err != nil {
			r.result.Status = Errored
			return err
		}
	}
	if err := r.flush(context.WithoutCancel(ctx)); err != nil {
		r.result.Status = Errored
		return err
	}
	return nil
}

// placementOnly are the directives whose effect a RUN REPEATABLE state
// below them already holds, up to file contents.
var placementOnly = map[layerfile.Kind]bool{
	layerfile.Copy: true, layerfile.Workdir: true, layerfile.User: true, layerfile.Env: true,
	layerfile.BuildEnv: true, layerfile.SecretEnv: true, layerfile.SetupFile: true,
	layerfile.Label: true, layerfile.Memory: true, layerfile.Checkpoint: true,
}

// repeatableJump finds a RUN REPEATABLE step with saved state that can be
// resumed directly from the restore point at.
func (r *runner) repeatableJump(at int) (int, bool) {
	if r.cfg.Fresh {
		return 0, false
	}
	for k := at; k < len(r.plan.steps); k++ {
		s := r.plan.steps[k]
		if s.ins.Kind == layerfile.RunRepeatable {
			if k == at {
				return 0, false // it runs next anyway
			}
			l, ok := r.cfg.Store.Repeatable(r.repeatableScope(), string(s.textKey), r.job.Branch, r.job.DefaultBranch)
			return k, ok && l.MachineArgs == r.args
		}
		if !placementOnly[s.ins.Kind] || s.skip {
			return 0, false
		}
	}
	return 0, false
}

func (r *runner) repeatableScope() string { return RunKey(r.job.Scope, r.job.Rel) }

// sameAsPrevious reports whether s is a host-only step that the previous
// run also had, with the same key.
func (r *runner) sameAsPrevious(s *step) bool {
	if s.inVM || s.forceSnapshot || s.skip || r.prev == nil || s.index > len(r.prev.Steps) {
		return false
	}
	p := r.prev.Steps[s.index-1]
	return p.Key == string(s.key) && p.Status != StatusFailed && p.Status != StatusSkipped && p.Status != StatusCancelled
}

// RunKey names the saved report of a Layerfile's last run (for a SPLIT
// Layerfile, that of its first copy): scope is the repository's, rel the
// Layerfile's path relative to the repository root.
func RunKey(scope, rel string) string { return scope + "/" + rel }

func runKey(job *Job) string {
	k := RunKey(job.Scope, job.Rel)
	if job.SplitPrefix {
		k += "#prefix"
	} else if job.SplitIndex > 0 {
		k += "#" + strconv.Itoa(job.SplitIndex)
	}
	return k
}

func exposedPort(s *step) int {
	switch {
	case s.ins.Website != nil:
		return s.ins.Website.Port
	case s.ins.TCP != nil:
		return s.ins.TCP.GuestPort
	}
	return 0
}

// waitForPort waits up to 2 minutes until something in the guest accepts
// connections on port (SPEC §2, EXPOSE WEBSITE).
func (r *runner) waitForPort(ctx context.Context, s *step, port int) error {
	script := fmt.Sprintf("for i in $(seq 1 120); do timeout 1 bash -c '</dev/tcp/127.0.0.1/%d' 2>/dev/null && exit 0; sleep 1; done; exit 1", port)
	code, err := r.m.Run(ctx, vm.Exec{Argv: []string{"/bin/bash", "-c", script}, Env: baseEnv()}, io.Discard, io.Discard)
	if err != nil {
		return err
	}
	if code != 0 {
		return &stepError{step: s, err: fmt.Errorf("nothing answered on port %d within 2 minutes (start the server with RUN BACKGROUND)", port)}
	}
	return nil
}

// safeFile makes a file name from an arbitrary string.
func safeFile(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:12])
}

// deepestReusable finds the last step whose snapshot can be trusted: its key
// matches and every file read up to it still has the same content.
func (r *runner) deepestReusable() (int, store.Layer) {
	steps := r.plan.steps
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		for _, c := range r.cfg.Store.Candidates(string(s.key)) {
			if c.MachineArgs != r.args {
				continue
			}
			if p, _ := firstDifference(c.Reads, s.reads); p != "" {
				continue
			}
			if r.cfg.Fresh && r.atOrAfterRepeatable(i) {
				continue // --fresh: nothing built on the old REPEATABLE state
			}
			return i + 1, c
		}
	}
	return 0, store.Layer{}
}

// atOrAfterRepeatable reports whether step i is, or follows, a RUN
// REPEATABLE step.
func (r *runner) atOrAfterRepeatable(i int) bool {
	for _, s := range r.plan.steps[:i+1] {
		if s.ins.Kind == layerfile.RunRepeatable {
			return true
		}
	}
	return false
}

// ensureMachine starts the VM for the current base: a restore of the base
// layer, or a boot of the base image.
func (r *runner) ensureMachine(ctx context.Context) error {
	if r.m != nil {
		return nil
	}
	return r.startFrom(ctx, r.base)
}

func (r *runner) startFrom(ctx context.Context, layerID string) error {
	st := r.cfg.Store
	active, err := st.Prepare(layerID)
	if err != nil {
		return err
	}
	var m vm.Machine
	r.cacheGen, r.cacheFP, r.cacheReady = map[string]int64{}, map[string]string{}, map[string]bool{}
	if layerID == "" {
		r.baseDepth = 0
		r.emit(Event{Kind: "info", Message: "booting " + r.plan.image})
		m, err = r.cfg.Hypervisor.Boot(ctx, r.img.Image, active.Overlay(), r.spec)
	} else {
		l, gerr := st.Get(layerID)
		if gerr != nil {
			_ = st.Abort(active)
			return gerr
		}
		r.emit(Event{Kind: "info", Message: "restoring snapshot " + layerID[:8] + " (" + l.Instruction + ")"})
		r.cacheGen = cloneMap(l.CacheGen)
		r.baseDepth = l.Depth
		m, err = r.cfg.Hypervisor.Restore(ctx, r.img.Image, vm.SnapshotFiles{
			Disk: st.DiskPath(layerID), State: st.StatePath(layerID), MachineArgs: l.MachineArgs,
		}, active.Overlay(), r.spec)
	}
	if err != nil {
		_ = st.Abort(active)
		return err
	}
	r.m, r.active, r.base, r.clean = m, active, layerID, true
	r.owners = map[string]repofiles.Owner{}
	return nil
}

// close stops the VM and throws away its uncommitted overlay.
func (r *runner) close() {
	if err := r.flush(context.Background()); err != nil && r.result.Error == "" {
		r.emit(Event{Kind: "info", Message: "warning: " + err.Error()})
	}
	if r.m != nil {
		_ = r.m.Close()
		r.m = nil
	}
	if r.active != nil {
		_ = r.cfg.Store.Abort(r.active)
		r.active = nil
	}
}

// execute runs one step and returns the layer that holds the state after it
// ("" when none was taken).
func (r *runner) execute(ctx context.Context, s *step) (string, error) {
	if s.ins.Kind == layerfile.Button {
		if err := r.askButton(ctx, s); err != nil {
			return "", err
		}
	}
	if port := exposedPort(s); port != 0 {
		if err := r.ensureMachine(ctx); err != nil {
			return "", err
		}
		if err := r.waitForPort(ctx, s, port); err != nil {
			return "", err
		}
	}
	if !s.inVM {
		if s.forceSnapshot && !r.clean {
			return r.snapshot(ctx, s)
		}
		if r.clean && r.base != "" {
			// The VM state equals the base layer: it is this step's too.
			_ = r.cfg.Store.Record(string(s.key), r.base)
			return r.base, nil
		}
		return "", nil
	}
	if s.ins.Kind == layerfile.RunRepeatable {
		return r.executeRepeatable(ctx, s)
	}
	if err := r.ensureMachine(ctx); err != nil {
		return "", err
	}
	if err := r.runInVM(ctx, s); err != nil {
		return "", err
	}
	r.clean = false
	if s.after.noSnapshot && !s.forceSnapshot {
		return "", nil
	}
	return r.snapshot(ctx, s)
}

// beforeSplit reports whether s comes before this copy's SPLIT: the
// steps before SPLIT were run (and their BUTTONs asked) once for all copies.
func (r *runner) beforeSplit(s *step) bool {
	if r.job.SplitPrefix {
		return false
	}
	for _, o := range r.plan.steps[s.index:] {
		if o.ins.Kind == layerfile.Split {
			return true
		}
	}
	return false
}

// askButton asks a person to approve a BUTTON step.
func (r *runner) askButton(ctx context.Context, s *step) error {
	if r.cfg.Button == nil {
		return &stepError{step: s, err: fmt.Errorf("BUTTON %q needs approval: run in a terminal to answer it, or pass --accept-buttons", s.ins.Button.Message)}
	}
	if err := r.cfg.Button(ctx, r.job.Runner, s.ins.Button.Message); err != nil {
		return &stepError{step: s, err: err}
	}
	return nil
}

// executeRepeatable runs a RUN REPEATABLE step from the state its last
// successful run left, when there is one (SPEC §3).
func (r *runner) executeRepeatable(ctx context.Context, s *step) (string, error) {
	st := r.cfg.Store
	var prevState store.Layer
	found := false
	if !r.cfg.Fresh {
		prevState, found = st.Repeatable(r.repeatableScope(), string(s.textKey), r.job.Branch, r.job.DefaultBranch)
		if found && prevState.MachineArgs != r.args {
			found = false
		}
	}
	if found {
		// Keep what this run built so far, then continue from the
		// state of the step's last successful run.
		if r.m != nil && !r.clean && !s.before.noSnapshot {
			if _, err := r.snapshot(ctx, r.plan.steps[s.index-2]); err != nil {
				return "", err
			}
		}
		r.close()
		if err := r.startFrom(ctx, prevState.ID); err != nil {
			return "", err
		}
		if err := r.putFilesInPlace(ctx, s, prevState.Files); err != nil {
			return "", err
		}
	} else if err := r.ensureMachine(ctx); err != nil {
		return "", err
	}
	if err := r.runInVM(ctx, s); err != nil {
		return "", err
	}
	r.clean = false
	id, err := r.snapshot(ctx, s)
	if err != nil {
		return "", err
	}
	r.pending.afterCommit = append(r.pending.afterCommit, func(id string) error {
		return st.SetRepeatable(r.repeatableScope(), r.job.Branch, string(s.textKey), id)
	})
	return id, nil
}

// putFilesInPlace makes the guest's copies of repository files match
// today's: added and changed files are written in place with a current
// mtime, deleted ones removed; unchanged files are not touched.
func (r *runner) putFilesInPlace(ctx context.Context, s *step, had map[string]store.FileEntry) error {
	var copied [][]repofiles.Entry
	for _, prior := range r.plan.steps[:s.index] {
		copied = append(copied, prior.entries)
	}
	var changed []repofiles.Entry
	for _, e := range repofiles.Merge(copied...) {
		now, ok := s.files[e.Guest]
		if !ok { // a directory
			continue
		}
		if old, ok := had[e.Guest]; ok && old.Digest == now.Digest && old.Mode == now.Mode {
			continue
		}
		changed = append(changed, e)
	}
	var deletes []string
	for guest := range had {
		if _, ok := s.files[guest]; !ok {
			deletes = append(deletes, guest)
		}
	}
	if len(changed) == 0 && len(deletes) == 0 {
		return nil
	}
	owner, err := r.owner(ctx, s.before.user)
	if err != nil {
		return err
	}
	r.emit(Event{Kind: "info", Message: fmt.Sprintf("putting today's files in place: %d changed or added, %d deleted", len(changed), len(deletes))})
	return r.copyIn(ctx, changed, deletes, owner, time.Now())
}

func (r *runner) copyIn(ctx context.Context, entries []repofiles.Entry, deletes []string, owner repofiles.Owner, mtime time.Time) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(repofiles.WriteTar(pw, r.job.RepoRoot, entries, deletes, owner, mtime, agentproto.DeleteHeader))
	}()
	err := r.m.CopyIn(ctx, "/", pr)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("copy files into the VM: %w", err)
	}
	return nil
}

// pendingSnapshot is a snapshot whose memory is still being saved while
// the VM goes on with the next step.
type pendingSnapshot struct {
	active *store.Active
	meta   store.Layer
	finish func(context.Context) (vm.SnapshotResult, error)
	// afterCommit runs once the layer is committed (e.g. a RUN REPEATABLE
	// state pointer, which must never point at an unfinished layer).
	afterCommit []func(id string) error
}

// snapshot takes the snapshot of the VM's state after step s and returns
// its layer ID. The guest stops only for milliseconds; its memory is saved
// in the background while the next step runs, and the layer is committed
// by flush (before the next snapshot, before the VM closes).
func (r *runner) snapshot(ctx context.Context, s *step) (string, error) {
	// A finished step's snapshot is worth keeping even on Ctrl-C.
	if err := r.flush(context.WithoutCancel(ctx)); err != nil {
		return "", err
	}
	st := r.cfg.Store
	next, err := st.Prepare(r.active.ID)
	if err != nil {
		return "", err
	}
	finish, err := r.m.StartSnapshot(ctx, r.active.StatePath(), next.Overlay())
	if err != nil {
		_ = st.Abort(next)
		return "", fmt.Errorf("snapshot after step %d: %w", s.index, err)
	}
	depth := r.baseDepth + 1
	meta := store.Layer{
		Image:        r.img.ID,
		Depth:        depth,
		Key:          string(s.key),
		MachineArgs:  r.args,
		MemoryMB:     r.spec.MemoryMB,
		CPUs:         r.spec.CPUs,
		AgentVersion: version.Version,
		Repository:   r.job.RepoRoot,
		Layerfile:    r.job.Rel,
		Step:         s.index,
		Instruction:  s.ins.Text,
		Reads:        s.reads,
		Files:        s.files,
		CacheGen:     cloneMap(r.cacheGen),
	}
	if s.ins.Kind == layerfile.Checkpoint && s.ins.Checkpoint.Name != "" {
		meta.Checkpoint = s.ins.Checkpoint.Name
	}
	id := r.active.ID
	r.pending = &pendingSnapshot{active: r.active, meta: meta, finish: finish}
	r.active, r.base, r.clean, r.baseDepth = next, id, true, depth
	r.result.FinalLayer = id
	return id, nil
}

// flush waits for the snapshot being saved, if any, and commits it.
func (r *runner) flush(ctx context.Context) error {
	p := r.pending
	if p == nil {
		return nil
	}
	r.pending = nil
	st := r.cfg.Store
	res, err := p.finish(ctx)
	if err != nil {
		_ = st.Abort(p.active)
		return fmt.Errorf("snapshot after step %d: %w", p.meta.Step, err)
	}
	p.meta.Pause = res.Pause
	committed, err := st.Commit(p.active, p.meta)
	if err != nil {
		_ = st.Abort(p.active)
		return err
	}
	if err := st.Record(p.meta.Key, committed.ID); err != nil {
		return err
	}
	for _, f := range p.afterCommit {
		if err := f(committed.ID); err != nil {
			return err
		}
	}
	return nil
}

// runInVM performs a step that changes the VM.
func (r *runner) runInVM(ctx context.Context, s *step) error {
	if err := r.syncCachesIn(ctx, s); err != nil {
		return err
	}
	if err := r.runStep(ctx, s); err != nil {
		return err
	}
	return r.saveCachesOut(ctx, s)
}

func (r *runner) runStep(ctx context.Context, s *step) error {
	b := s.before
	switch s.ins.Kind {
	case layerfile.Run, layerfile.RunRepeatable:
		code, err := r.m.Run(ctx, r.shellExec(b, s.ins.Run.Command), r.output(), r.output())
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if code != 0 {
			return &stepError{step: s, err: fmt.Errorf("exit code %d", code)}
		}
	case layerfile.RunBackground:
		logPath := fmt.Sprintf("/var/log/strata/background-%d.log", s.index)
		if err := r.m.StartBackground(ctx, r.shellExec(b, s.ins.Run.Command), logPath, 2*time.Second); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return &stepError{step: s, err: err}
		}
	case layerfile.Copy:
		owner, err := r.owner(ctx, b.user)
		if err != nil {
			return err
		}
		return r.copyIn(ctx, s.entries, nil, owner, time.Time{})
	case layerfile.Workdir:
		dir := s.after.workdir
		script := fmt.Sprintf("if [ ! -d %[1]s ]; then mkdir -p %[1]s && chown %[2]s: %[1]s; fi", shellQuote(dir), shellQuote(b.user))
		return r.rootScript(ctx, s, script)
	case layerfile.Split:
		// Each copy gets its own machine id (its random pool is reseeded
		// by the restore).
		return r.rootScript(ctx, s, "rm -f /etc/machine-id /var/lib/dbus/machine-id && (systemd-machine-id-setup >/dev/null 2>&1 || dbus-uuidgen --ensure=/etc/machine-id)")
	case layerfile.User:
		name := s.after.user
		script := fmt.Sprintf(`id -u %[1]s >/dev/null 2>&1 || { useradd -m -s /bin/bash -G root %[1]s && echo %[2]s > /etc/sudoers.d/90-strata-%[3]s && chmod 440 /etc/sudoers.d/90-strata-%[3]s; }`,
			shellQuote(name), shellQuote(name+" ALL=(ALL) NOPASSWD:ALL"), sanitize(name))
		return r.rootScript(ctx, s, script)
	}
	return nil
}

func (r *runner) rootScript(ctx context.Context, s *step, script string) error {
	var out bytes.Buffer
	code, err := r.m.Run(ctx, vm.Exec{Argv: []string{"/bin/sh", "-c", script}, Env: baseEnv()}, &out, &out)
	if err != nil {
		return err
	}
	if code != 0 {
		return &stepError{step: s, err: fmt.Errorf("exit code %d: %s", code, strings.TrimSpace(out.String()))}
	}
	return nil
}

// owner is the numeric owner of files copied as user.
func (r *runner) owner(ctx context.Context, user string) (repofiles.Owner, error) {
	if user == "root" || user == "" {
		return repofiles.Owner{}, nil
	}
	if o, ok := r.owners[user]; ok {
		return o, nil
	}
	var out bytes.Buffer
	code, err := r.m.Run(ctx, vm.Exec{Argv: []string{"id", "-u", user}, Env: baseEnv()}, &out, io.Discard)
	if err != nil || code != 0 {
		return repofiles.Owner{}, fmt.Errorf("look up user %s: exit %d: %v", user, code, err)
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	out.Reset()
	code, err = r.m.Run(ctx, vm.Exec{Argv: []string{"id", "-g", user}, Env: baseEnv()}, &out, io.Discard)
	if err != nil || code != 0 {
		return repofiles.Owner{}, fmt.Errorf("look up group of %s: exit %d: %v", user, code, err)
	}
	gid, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	o := repofiles.Owner{UID: uid, GID: gid}
	r.owners[user] = o
	return o, nil
}

// shellExec builds the bash invocation of a RUN: login profile files and
// SETUP FILEs are sourced first; the step's own PATH stays in front.
func (r *runner) shellExec(b state, command string) vm.Exec {
	var script strings.Builder
	script.WriteString(`__strata_path="$PATH"; for __f in /etc/profile "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do [ -r "$__f" ] && . "$__f" >/dev/null 2>&1; done; `)
	script.WriteString(`PATH="$__strata_path:$PATH"; unset __f __strata_path; `)
	for _, f := range b.setupFiles {
		fmt.Fprintf(&script, ". %s; ", shellQuote(f))
	}
	script.WriteString("\n")
	script.WriteString(command)
	user := b.user
	if user == "root" {
		user = ""
	}
	return vm.Exec{Argv: []string{"/bin/bash", "-c", script.String()}, Env: b.env.list(), User: user, Dir: b.workdir}
}

func baseEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func sanitize(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteRune(c)
		}
	}
	return b.String()
}

func (r *runner) output() io.Writer {
	if r.cfg.Output == nil {
		return io.Discard
	}
	return r.cfg.Output
}

func (r *runner) emit(e Event) {
	if r.cfg.Events == nil {
		return
	}
	e.Layerfile, e.Runner = r.job.Rel, r.job.Runner
	r.cfg.Events(e)
}

func (r *runner) report(s *step, status, reason string, secs float64, layer string) {
	r.result.Steps = append(r.result.Steps, StepReport{
		Index: s.index, Line: s.ins.Pos.Line, Instruction: s.ins.Text, Key: string(s.key),
		Status: status, Reason: reason, Seconds: secs, Layer: layer,
		BuildEnv: s.reportEnv, Secrets: s.reportSecrets,
	})
	r.emit(Event{Kind: "step", Index: s.index, Line: s.ins.Pos.Line, Instruction: s.ins.Text, Status: status, Reason: reason, Seconds: secs})
}

func (r *runner) skipRest(failed *step) {
	for _, s := range r.plan.steps[failed.index:] {
		r.report(s, StatusSkipped, fmt.Sprintf("step %d failed", failed.index), 0, "")
	}
}
