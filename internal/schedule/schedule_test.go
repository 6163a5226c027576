package schedule

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/plan"
)

func repoWith(t *testing.T, files map[string]string) *plan.Repo {
	t.Helper()
	root := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(content), 0o644)
	}
	repo, diags, err := plan.Load(root)
	if err != nil || layerfile.HasErrors(diags) {
		t.Fatalf("load: %v %v", err, diags)
	}
	return repo
}

// recorder is a fake engine: it logs starts and ends and fails the
// Layerfiles it is told to.
type recorder struct {
	mu      sync.Mutex
	log     []string
	fail    map[string]bool
	running int
	maxRun  int
}

func (r *recorder) run(ctx context.Context, j Job) engine.Result {
	r.mu.Lock()
	name := j.Runner
	if j.SplitPrefix {
		name += "(prefix)"
	}
	r.log = append(r.log, "start "+name)
	r.running++
	if r.running > r.maxRun {
		r.maxRun = r.running
	}
	r.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	res := engine.Result{Layerfile: j.Rel, Runner: j.Runner, Status: engine.Passed}
	if r.fail[j.Rel] {
		res.Status = engine.Failed
	}
	if j.SplitPrefix {
		for _, ins := range j.File.Instructions {
			if ins.Kind == layerfile.Split {
				res.Split = ins.Split.N
			}
		}
	}
	r.mu.Lock()
	r.running--
	r.log = append(r.log, "end "+name)
	r.mu.Unlock()
	return res
}

func (r *recorder) index(entry string) int {
	for i, e := range r.log {
		if e == entry {
			return i
		}
	}
	return -1
}

var graph = map[string]string{
	"base/Layerfile":   "FROM vm/debian:12\nRUN echo base\n",
	"a/Layerfile":      "FROM ../base\nRUN echo a\n",
	"b/Layerfile":      "FROM /base\nSPLIT 2\nRUN echo b\n",
	"deploy/Layerfile": "FROM vm/debian:12\nWAIT /a /b\nBUTTON deploy?\nRUN echo deploy\n",
}

func options(r *recorder, jobs int) Options {
	return Options{
		Jobs: jobs,
		RunnerName: func(f *layerfile.File, rel string) string {
			return strings.TrimSuffix(rel, "/Layerfile")
		},
		Run: r.run,
	}
}

func TestGraphOrderAndSplit(t *testing.T) {
	repo := repoWith(t, graph)
	rec := &recorder{}
	results := Run(context.Background(), repo, options(rec, 4))
	before := func(a, b string) {
		t.Helper()
		if ia, ib := rec.index(a), rec.index(b); ia < 0 || ib < 0 || ia > ib {
			t.Errorf("%q should come before %q in %v", a, b, rec.log)
		}
	}
	before("end base", "start a")
	before("end base", "start b(prefix)")
	before("end b(prefix)", "start b")
	before("end b(prefix)", "start b-2")
	before("end a", "start deploy")
	before("end b", "start deploy")
	before("end b-2", "start deploy")
	n := 0
	for _, e := range rec.log {
		if e == "start base" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("base ran %d times", n)
	}
	for i, f := range repo.Files {
		if repo.Rel(f.Path) == "b/Layerfile" && len(results[i]) != 3 {
			t.Errorf("b has %d results, want prefix + 2 copies", len(results[i]))
		}
	}
}

func TestDependentsOfAFailureAreCancelled(t *testing.T) {
	repo := repoWith(t, graph)
	rec := &recorder{fail: map[string]bool{"a/Layerfile": true}}
	var cancelled []engine.Result
	var mu sync.Mutex
	opts := options(rec, 2)
	opts.Cancelled = func(r engine.Result) { mu.Lock(); cancelled = append(cancelled, r); mu.Unlock() }
	Run(context.Background(), repo, opts)
	if len(cancelled) != 1 || cancelled[0].Layerfile != "deploy/Layerfile" || cancelled[0].Status != engine.Cancelled {
		t.Fatalf("cancelled %+v", cancelled)
	}
	if want := "cancelled: waited-on Layerfile a/Layerfile failed"; cancelled[0].Error != want {
		t.Fatalf("message %q, want %q", cancelled[0].Error, want)
	}
	if rec.index("start deploy") >= 0 {
		t.Fatal("deploy started")
	}
	if rec.maxRun > 2 {
		t.Fatalf("%d ran at once with --jobs 2", rec.maxRun)
	}
}
