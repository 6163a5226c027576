package engine

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/vm"
)

type harness struct {
	t    *testing.T
	repo string
	st   *store.Store
	hv   *fakeHypervisor
	out  lockedBuffer
	ctx  context.Context // nil: context.Background()
}

// lockedBuffer is a bytes.Buffer safe for concurrent runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func newHarness(t *testing.T) *harness {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, repo: t.TempDir(), st: st, hv: &fakeHypervisor{}}
}

func (h *harness) write(rel, content string) {
	p := filepath.Join(h.repo, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) run(layerfileText string, mod func(*Config)) Result {
	h.t.Helper()
	h.write("Layerfile", layerfileText)
	f, diags := layerfile.Parse("Layerfile", []byte(layerfileText))
	if layerfile.HasErrors(diags) {
		h.t.Fatalf("parse: %v", diags)
	}
	cfg := &Config{
		Store:      h.st,
		Hypervisor: h.hv,
		ResolveImage: func(ctx context.Context, name string, _ io.Writer) (ImageRef, error) {
			return ImageRef{ID: "img-" + name, Image: vm.Image{}}, nil
		},
		Salt:   []byte("salt"),
		Output: &h.out,
		LookupEnv: func(k string) (string, bool) {
			return os.LookupEnv(k)
		},
	}
	if mod != nil {
		mod(cfg)
	}
	ctx := h.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	return Run(ctx, cfg, &Job{
		RepoRoot: h.repo, File: f, Rel: "Layerfile", Scope: "repo",
		Branch: "main", DefaultBranch: "main", Runner: "main-layerfile",
	})
}

func statuses(r Result) string {
	var b []string
	for _, s := range r.Steps {
		b = append(b, s.Status)
	}
	return strings.Join(b, " ")
}

const tenSteps = `FROM vm/debian:12
RUN echo 1 >> /log
COPY app /app
RUN echo 2 >> /log
ENV A=b
RUN echo 3 >> /log
WORKDIR /srv
RUN echo 4 >> /log
USER app
RUN echo 5 >> /log
`

func TestNothingChangedReusesEverything(t *testing.T) {
	h := newHarness(t)
	h.write("app/main.go", "v1")
	first := h.run(tenSteps, nil)
	if first.Status != Passed || statuses(first) != "ran ran ran ran ran ran ran ran ran" {
		t.Fatalf("cold run: %s %s: %s", first.Status, statuses(first), first.Error)
	}
	if first.Steps[0].Reason != "no snapshot yet" {
		t.Fatalf("cold reason %q", first.Steps[0].Reason)
	}
	boots, restores := h.hv.boots, h.hv.restores
	second := h.run(tenSteps, nil)
	if second.Status != Passed || statuses(second) != "reused reused reused reused reused reused reused reused reused" {
		t.Fatalf("warm run: %s %s", second.Status, statuses(second))
	}
	if h.hv.boots != boots || h.hv.restores != restores {
		t.Fatalf("a no-op run started a VM")
	}
}

func TestEditingALineRerunsItAndBelow(t *testing.T) {
	h := newHarness(t)
	h.write("app/main.go", "v1")
	h.run(tenSteps, nil)
	edited := strings.Replace(tenSteps, "echo 3", "echo three", 1)
	r := h.run(edited, nil)
	if got := statuses(r); got != "reused reused reused reused ran ran ran ran ran" {
		t.Fatalf("statuses %s", got)
	}
	if r.Steps[4].Reason != "this line changed" || !strings.Contains(r.Steps[5].Reason, "step 5 (line 6) above ran") {
		t.Fatalf("reasons %q / %q", r.Steps[4].Reason, r.Steps[5].Reason)
	}
	if h.hv.restores != 1 {
		t.Fatalf("restores = %d, want 1", h.hv.restores)
	}
}

func TestChangedCopiedFileRerunsFromTheCopy(t *testing.T) {
	h := newHarness(t)
	h.write("app/main.go", "v1")
	h.run(tenSteps, nil)
	h.write("app/main.go", "v2 is longer")
	r := h.run(tenSteps, nil)
	if got := statuses(r); got != "reused ran ran ran ran ran ran ran ran" {
		t.Fatalf("statuses %s", got)
	}
	if r.Steps[1].Reason != "file app/main.go changed" {
		t.Fatalf("reason %q", r.Steps[1].Reason)
	}
}

func TestRepeatableAccumulatesAndFreshResets(t *testing.T) {
	h := newHarness(t)
	lf := "FROM vm/debian:12\nBUILD ENV X\nRUN REPEATABLE echo $X >> /root/log\n"
	t.Setenv("X", "one")
	h.run(lf, nil)
	t.Setenv("X", "two")
	r := h.run(lf, nil)
	if r.Status != Passed {
		t.Fatalf("%s: %s", r.Status, r.Error)
	}
	if got := h.logOf(r.FinalLayer, "/root/log"); got != "one\ntwo\n" {
		t.Fatalf("after two runs the log is %q", got)
	}
	t.Setenv("X", "three")
	r = h.run(lf, func(c *Config) { c.Fresh = true })
	if got := h.logOf(r.FinalLayer, "/root/log"); got != "three\n" {
		t.Fatalf("after --fresh the log is %q", got)
	}
	if r.Steps[0].Reason != "BUILD ENV X changed" {
		t.Fatalf("reason %q", r.Steps[0].Reason)
	}
	// Nothing changed but --fresh: the REPEATABLE step says why it ran.
	r = h.run(lf, func(c *Config) { c.Fresh = true })
	if statuses(r) != "reused ran" || r.Steps[1].Reason != "--fresh: RUN REPEATABLE starts from a clean state" {
		t.Fatalf("%s %q", statuses(r), r.Steps[1].Reason)
	}
}

func TestRepeatableKeptWhenALaterStepFails(t *testing.T) {
	h := newHarness(t)
	lf := "FROM vm/debian:12\nRUN REPEATABLE echo x >> /log\nRUN exit 3\n"
	r := h.run(lf, nil)
	if r.Status != Failed || statuses(r) != "ran failed" || !strings.Contains(r.Error, "exit code 3") {
		t.Fatalf("%s %s %q", r.Status, statuses(r), r.Error)
	}
	// The failed step's edit makes the REPEATABLE step run again from
	// its saved state.
	lf2 := "FROM vm/debian:12\nRUN REPEATABLE echo x >> /log\nRUN exit 0\n"
	r = h.run(lf2, nil)
	if r.Status != Passed {
		t.Fatalf("%s %s", r.Status, r.Error)
	}
	if got := h.logOf(r.FinalLayer, "/log"); got != "x\n" {
		t.Fatalf("log %q (the step was reused, so one line)", got)
	}
}

func TestFailingStepSkipsTheRest(t *testing.T) {
	h := newHarness(t)
	r := h.run("FROM vm/debian:12\nRUN echo a >> /x\nRUN exit 7\nRUN echo b >> /x\n", nil)
	if r.Status != Failed || statuses(r) != "ran failed skipped" {
		t.Fatalf("%s %s", r.Status, statuses(r))
	}
	if !strings.Contains(r.Error, "step 2 (line 3) RUN exit 7: exit code 7") {
		t.Fatalf("error %q", r.Error)
	}
}

func TestSecretsNeverReachTheStore(t *testing.T) {
	h := newHarness(t)
	secret := "hunter2-very-secret"
	lf := "FROM vm/debian:12\nSECRET ENV TOKEN\nRUN echo $TOKEN >> /t\n"
	r := h.run(lf, func(c *Config) { c.Secrets = map[string]string{"TOKEN": secret} })
	if r.Status != Passed {
		t.Fatalf("%s %s", r.Status, r.Error)
	}
	filepath.Walk(h.st.Root(), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, "/state") || strings.HasSuffix(p, "/state.pack") {
			return nil // the VM's own memory holds what the VM holds
		}
		data, _ := os.ReadFile(p)
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("%s contains the secret", p)
		}
		return nil
	})
	// A changed secret value invalidates from the SECRET ENV line.
	r = h.run(lf, func(c *Config) { c.Secrets = map[string]string{"TOKEN": "other"} })
	if statuses(r) != "ran ran" || r.Steps[0].Reason != "SECRET ENV TOKEN changed" {
		t.Fatalf("%s %q", statuses(r), r.Steps[0].Reason)
	}
	r = h.run(lf, nil)
	if r.Status != Failed || !strings.Contains(r.Error, "secret TOKEN was not given") {
		t.Fatalf("missing secret: %s %q", r.Status, r.Error)
	}
}

func TestSkipRemainingIf(t *testing.T) {
	h := newHarness(t)
	r := h.run("FROM vm/debian:12\nENV MODE=quick\nSKIP REMAINING IF MODE=quick\nRUN exit 1\n", nil)
	if r.Status != SkippedRemaining || len(r.Steps) != 2 {
		t.Fatalf("%s %v", r.Status, statuses(r))
	}
	r = h.run("FROM vm/debian:12\nENV MODE=full\nSKIP REMAINING IF MODE=quick\nRUN exit 0\n", nil)
	if r.Status != Passed || len(r.Steps) != 3 {
		t.Fatalf("%s %v", r.Status, statuses(r))
	}
}

// logOf reads a file from the fake machine state saved in a layer.
func (h *harness) logOf(layer, path string) string {
	h.t.Helper()
	m, err := h.hv.Restore(context.Background(), vm.Image{}, vm.SnapshotFiles{State: h.st.StatePath(layer)}, filepath.Join(h.t.TempDir(), "o"), vm.Spec{})
	if err != nil {
		h.t.Fatal(err)
	}
	return m.(*fakeMachine).fs[path]
}

func TestRepeatableResumesPastCopiesWithTodaysFiles(t *testing.T) {
	h := newHarness(t)
	lf := "FROM vm/debian:12\nRUN echo deps >> /log\nCOPY app /app\nWORKDIR /app\nRUN REPEATABLE echo build >> /log\n"
	h.write("app/main.go", "v1")
	h.write("app/old.go", "old")
	h.run(lf, nil)
	restores := h.hv.restores
	h.write("app/main.go", "v2")
	os.Remove(filepath.Join(h.repo, "app/old.go"))
	h.write("app/new.go", "new")
	r := h.run(lf, nil)
	if r.Status != Passed || statuses(r) != "reused reused reused ran" {
		t.Fatalf("%s %s %s", r.Status, statuses(r), r.Error)
	}
	if h.hv.restores != restores+1 || h.hv.boots != 1 {
		t.Fatalf("restores %d boots %d: want exactly one restore of the REPEATABLE state", h.hv.restores-restores, h.hv.boots)
	}
	m, _ := h.hv.Restore(context.Background(), vm.Image{}, vm.SnapshotFiles{State: h.st.StatePath(r.FinalLayer)}, filepath.Join(t.TempDir(), "o"), vm.Spec{})
	fs := m.(*fakeMachine).fs
	if fs["/app/main.go"] != "v2" || fs["/app/new.go"] != "new" || fs["/log"] != "deps\nbuild\nbuild\n" {
		t.Fatalf("guest files %v", fs)
	}
	if _, ok := fs["/app/old.go"]; ok {
		t.Fatal("deleted file still in the guest")
	}
	// Nothing changed now: everything reused.
	r = h.run(lf, nil)
	if statuses(r) != "reused reused reused reused" {
		t.Fatalf("third run %s", statuses(r))
	}
}

func TestTwoRunsAtOnceShareTheStoreSafely(t *testing.T) {
	h := newHarness(t)
	h.write("app/main.go", "v1")
	results := make(chan Result, 2)
	for i := 0; i < 2; i++ {
		go func() { results <- h.run(tenSteps, nil) }()
	}
	for i := 0; i < 2; i++ {
		if r := <-results; r.Status != Passed {
			t.Fatalf("concurrent run: %s %s", r.Status, r.Error)
		}
	}
	// Every committed layer is whole, and a third run reuses everything.
	err := h.st.Walk(func(l store.Layer) error {
		for _, p := range []string{h.st.DiskPath(l.ID), h.st.StatePath(l.ID)} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("layer %s: %v", l.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.run(tenSteps, nil); statuses(r) != "reused reused reused reused reused reused reused reused reused" {
		t.Fatalf("after concurrent runs: %s", statuses(r))
	}
}

func TestButtonAsksAgainWhenAStepBelowRuns(t *testing.T) {
	h := newHarness(t)
	asked := 0
	approve := func(c *Config) {
		c.Button = func(ctx context.Context, runner, msg string) error { asked++; return nil }
	}
	lf := "FROM vm/debian:12\nRUN echo a >> /x\nBUTTON ship it?\nRUN echo b >> /x\n"
	if r := h.run(lf, approve); r.Status != Passed || asked != 1 {
		t.Fatalf("%s asked %d", r.Status, asked)
	}
	// Nothing runs: no question.
	if r := h.run(lf, approve); statuses(r) != "reused reused reused" || asked != 1 {
		t.Fatalf("%s asked %d", statuses(r), asked)
	}
	// The step below the button runs again: it asks again, and without
	// anyone to answer the step fails saying how to approve.
	lf2 := strings.Replace(lf, "echo b", "echo c", 1)
	r := h.run(lf2, nil)
	if r.Status != Failed || statuses(r) != "reused failed skipped" || !strings.Contains(r.Error, "--accept-buttons") {
		t.Fatalf("%s %s %q", r.Status, statuses(r), r.Error)
	}
	if r := h.run(lf2, approve); r.Status != Passed || asked != 2 {
		t.Fatalf("%s asked %d", r.Status, asked)
	}
}

func TestFreshRerunsEverythingBuiltOnTheRepeatableState(t *testing.T) {
	h := newHarness(t)
	lf := "FROM vm/debian:12\nRUN REPEATABLE echo x >> /log\nRUN echo after >> /log\n"
	h.run(lf, nil)
	r := h.run(lf, func(c *Config) { c.Fresh = true })
	if statuses(r) != "ran ran" {
		t.Fatalf("--fresh: %s", statuses(r))
	}
	if got := h.logOf(r.FinalLayer, "/log"); got != "x\nafter\n" {
		t.Fatalf("log %q", got)
	}
}

func TestModeChangeIsAChange(t *testing.T) {
	h := newHarness(t)
	h.write("run.sh", "echo hi")
	lf := "FROM vm/debian:12\nCOPY run.sh /app/\nRUN echo ok >> /x\n"
	h.run(lf, nil)
	if err := os.Chmod(filepath.Join(h.repo, "run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := h.run(lf, nil); statuses(r) != "ran ran" || r.Steps[0].Reason != "file run.sh changed" {
		t.Fatalf("after chmod: %s %q", statuses(r), r.Steps[0].Reason)
	}
}

func TestSkipAfterDisabledCheckpointKeepsTheFinalState(t *testing.T) {
	h := newHarness(t)
	r := h.run("FROM vm/debian:12\nRUN echo a >> /x\nCHECKPOINT disabled\nRUN echo b >> /x\nENV X=1\nSKIP REMAINING IF X=1\nRUN exit 1\n", nil)
	if r.Status != SkippedRemaining {
		t.Fatalf("%s %s", r.Status, r.Error)
	}
	if got := h.logOf(r.FinalLayer, "/x"); got != "a\nb\n" {
		t.Fatalf("final state holds %q", got)
	}
}

// Ctrl-C while a step runs: the step is cancelled (not failed), the rest
// skipped, the Layerfile cancelled; the steps before it keep their
// snapshots, so the next run goes on from there.
func TestInterruptedStepIsCancelled(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx = ctx
	h.hv.onBlock = cancel
	lf := "FROM vm/debian:12\nRUN echo 1 >> /log\nRUN block-until-cancelled\nRUN echo 3 >> /log\n"
	r := h.run(lf, nil)
	if r.Status != Cancelled || statuses(r) != "ran cancelled skipped" {
		t.Fatalf("interrupted run: %s, steps %q", r.Status, statuses(r))
	}
	h.ctx, h.hv.onBlock = nil, nil
	r = h.run(strings.Replace(lf, "block-until-cancelled", "true", 1), nil)
	if r.Status != Passed || statuses(r) != "reused ran ran" {
		t.Fatalf("rerun: %s, steps %q", r.Status, statuses(r))
	}
}
