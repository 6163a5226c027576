package main

// End-to-end tests: the strata binary runs Layerfiles in real VMs under
// QEMU. They need the base image (built once into the shared images dir)
// and take minutes; `go test -short` skips them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/image/imagetest"
)

// cli runs the strata binary against one temporary STRATA_HOME.
type cli struct {
	t      *testing.T
	bin    string
	env    []string
	home   string
	images string
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: boots VMs")
	}
	imagetest.NeedTools(t)
	agent := imagetest.BuildAgent(t)
	cfg := imagetest.Config(t, agent)
	var progress bytes.Buffer
	if _, err := image.Ensure(t.Context(), cfg, "vm/debian:12", nil, &progress); err != nil {
		t.Fatalf("base image: %v\n%s", err, progress.String())
	}
	bin := filepath.Join(t.TempDir(), "strata")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build strata: %v\n%s", err, out)
	}
	home := t.TempDir()
	return &cli{t: t, bin: bin, home: home, images: cfg.ImagesDir, env: []string{
		"STRATA_HOME=" + home, "STRATA_IMAGES=" + cfg.ImagesDir, "STRATA_AGENT=" + agent}}
}

// environ is the current environment (tests set variables as they go)
// plus this CLI's STRATA_* settings.
func (c *cli) environ() []string { return append(os.Environ(), c.env...) }

type event struct {
	Event       string  `json:"event"`
	Layerfile   string  `json:"layerfile"`
	Runner      string  `json:"runner"`
	Index       int     `json:"index"`
	Instruction string  `json:"instruction"`
	Status      string  `json:"status"`
	Reason      string  `json:"reason"`
	Text        string  `json:"text"`
	Seconds     float64 `json:"seconds"`
	Error       string  `json:"error"`
}

type runOutput struct {
	code   int
	events []event
	raw    string
	stderr string
}

// steps returns the final status of each step, in order.
func (o runOutput) steps() string {
	var s []string
	for _, e := range o.events {
		if e.Event == "step" {
			s = append(s, e.Status)
		}
	}
	return strings.Join(s, " ")
}

func (o runOutput) output() string {
	var b strings.Builder
	for _, e := range o.events {
		if e.Event == "output" {
			b.WriteString(e.Text + "\n")
		}
	}
	return b.String()
}

func (o runOutput) step(i int) event {
	for _, e := range o.events {
		if e.Event == "step" && e.Index == i {
			return e
		}
	}
	return event{}
}

func (c *cli) run(dir string, args ...string) runOutput {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"run", "--output", "json"}, append(args, dir)...)...)
	cmd.Env = c.environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := runOutput{raw: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		o.code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("strata run: %v", err)
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			c.t.Fatalf("not JSON: %q", sc.Text())
		}
		o.events = append(o.events, e)
	}
	c.t.Logf("strata run %v: exit %d, steps: %s", args, o.code, o.steps())
	return o
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const e2eLayerfile = `FROM vm/debian:12
SECRET ENV TOKEN
RUN echo "token is $TOKEN" && echo "user $(whoami) in $(pwd)" && echo ready > /root/setup
COPY app /app
RUN cat /app/msg.txt
BUILD ENV X
RUN REPEATABLE echo "x=$X" >> /root/log && echo "log has $(wc -l < /root/log) lines"
RUN test "$(cat /app/msg.txt)" != fail
`

func TestRunReusesRerunsAndKeepsRepeatableState(t *testing.T) {
	c := newCLI(t)
	repo := t.TempDir()
	lf := filepath.Join(repo, "Layerfile")
	writeFile(t, lf, e2eLayerfile)
	writeFile(t, filepath.Join(repo, "app/msg.txt"), "hello\n")
	secret := "s3cr3t-value-42"
	t.Setenv("TOKEN", secret)
	t.Setenv("X", "one")

	// Cold: every step runs; the secret is masked.
	o := c.run(repo, "--secret", "TOKEN")
	if o.code != 0 || o.steps() != "ran ran ran ran ran ran ran" {
		t.Fatalf("cold run: exit %d, steps %s\n%s\n%s", o.code, o.steps(), o.raw, o.stderr)
	}
	out := o.output()
	for _, want := range []string{"token is ***", "user root in /root", "hello", "log has 1 lines"} {
		if !strings.Contains(out, want) {
			t.Errorf("cold output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(o.raw+o.stderr, secret) {
		t.Fatal("the secret appears in the output")
	}

	// Nothing changed: every step reused, nothing executed.
	o = c.run(repo, "--secret", "TOKEN")
	if o.code != 0 || o.steps() != "reused reused reused reused reused reused reused" {
		t.Fatalf("no-op run: exit %d, steps %s", o.code, o.steps())
	}

	// A copied file changed: the COPY and everything below run again; the
	// REPEATABLE step continues from its previous state (two lines now).
	writeFile(t, filepath.Join(repo, "app/msg.txt"), "changed\n")
	t.Setenv("X", "two")
	o = c.run(repo, "--secret", "TOKEN")
	if o.code != 0 || o.steps() != "reused reused ran ran ran ran ran" {
		t.Fatalf("file change: exit %d, steps %s\n%s", o.code, o.steps(), o.stderr)
	}
	if r := o.step(3).Reason; r != "file app/msg.txt changed" {
		t.Errorf("COPY reason %q", r)
	}
	if out := o.output(); !strings.Contains(out, "changed") || !strings.Contains(out, "log has 2 lines") {
		t.Errorf("output:\n%s", out)
	}

	// --fresh: the REPEATABLE step starts from a clean state.
	t.Setenv("X", "three")
	o = c.run(repo, "--secret", "TOKEN", "--fresh")
	if o.code != 0 || !strings.Contains(o.output(), "log has 1 lines") {
		t.Fatalf("fresh run: exit %d\n%s", o.code, o.output())
	}

	// Editing line 5 re-runs it and everything below, nothing above.
	writeFile(t, lf, strings.Replace(e2eLayerfile, "RUN cat /app/msg.txt", "RUN cat /app/msg.txt && echo edited", 1))
	o = c.run(repo, "--secret", "TOKEN")
	if o.code != 0 || o.steps() != "reused reused reused ran ran ran ran" {
		t.Fatalf("edit: exit %d, steps %s", o.code, o.steps())
	}
	if r := o.step(4).Reason; r != "this line changed" {
		t.Errorf("edited step reason %q", r)
	}

	// A failing step: exit 1, the step is named, later steps skipped.
	writeFile(t, filepath.Join(repo, "app/msg.txt"), "fail\n")
	o = c.run(repo, "--secret", "TOKEN")
	last := o.events[len(o.events)-1]
	if o.code != 1 || last.Status != "failed" || o.step(7).Status != "failed" {
		t.Fatalf("failing step: exit %d, steps %s, last %+v", o.code, o.steps(), last)
	}
	found := false
	for _, e := range o.events {
		if e.Event == "layerfile" && strings.Contains(e.Error, `step 7 (line 8) RUN test "$(cat /app/msg.txt)" != fail`) {
			found = true
		}
	}
	if !found {
		t.Errorf("no layerfile event names the failing step:\n%s", o.raw)
	}

	// The secret is nowhere in the store's metadata.
	filepath.Walk(c.home, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || filepath.Ext(p) != ".json" {
			return nil
		}
		if data, _ := os.ReadFile(p); bytes.Contains(data, []byte(secret)) {
			t.Errorf("%s contains the secret", p)
		}
		return nil
	})

	// explain tells the story of the last run.
	cmd := exec.Command(c.bin, "explain", repo)
	cmd.Env = c.environ()
	expl, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(expl), "failed") || !strings.Contains(string(expl), "file app/msg.txt changed") {
		t.Errorf("explain: %v\n%s", err, expl)
	}
}

func TestBadLayerfileExits2BeforeAnyVM(t *testing.T) {
	c := newCLI(t)
	repo := t.TempDir()
	writeFile(t, filepath.Join(repo, "Layerfile"), "FROM vm/debian:12\nRUN echo hi\nCMD [\"x\"]\n")
	start := time.Now()
	o := c.run(repo)
	if o.code != 2 {
		t.Fatalf("exit %d, want 2\n%s", o.code, o.stderr)
	}
	if !strings.Contains(o.stderr, "Layerfile:3:1: error:") {
		t.Errorf("stderr lacks the position: %s", o.stderr)
	}
	if o.steps() != "" || time.Since(start) > 30*time.Second {
		t.Errorf("steps ran for a bad Layerfile: %s", o.steps())
	}
	entries, _ := os.ReadDir(filepath.Join(c.home, "store", "layers"))
	if len(entries) != 0 {
		t.Errorf("a bad Layerfile left %d layers", len(entries))
	}

	// A base image strata cannot build is a bad Layerfile too.
	writeFile(t, filepath.Join(repo, "Layerfile"), "FROM vm/debian:13\nRUN echo hi\n")
	o = c.run(repo)
	if o.code != 2 || !strings.Contains(o.stderr, `Layerfile:1:1: error: FROM unknown image "vm/debian:13"`) || o.steps() != "" {
		t.Errorf("unknown image: exit %d, steps %q\n%s", o.code, o.steps(), o.stderr)
	}
}

func TestCacheDirKeepsContentAcrossRuns(t *testing.T) {
	c := newCLI(t)
	repo := t.TempDir()
	writeFile(t, filepath.Join(repo, "Layerfile"), `FROM vm/debian:12
CACHE /var/cache/mine
BUILD ENV N
RUN echo "cache holds: $(ls /var/cache/mine | tr '\n' ' ')" && echo "$N" > /var/cache/mine/run-$N
`)
	t.Setenv("N", "1")
	o := c.run(repo)
	if o.code != 0 || !strings.Contains(o.output(), "cache holds: \n") {
		t.Fatalf("first run: exit %d\n%s%s", o.code, o.output(), o.stderr)
	}
	// The step re-runs (BUILD ENV changed) in a VM that never saw run-1:
	// the saved CACHE content is put back first.
	t.Setenv("N", "2")
	o = c.run(repo)
	if o.code != 0 || !strings.Contains(o.output(), "cache holds: run-1 \n") {
		t.Fatalf("second run: exit %d\n%s%s", o.code, o.output(), o.stderr)
	}
	t.Setenv("N", "3")
	o = c.run(repo, "--no-cache-dirs")
	if o.code != 0 || !strings.Contains(o.output(), "cache holds: \n") {
		t.Fatalf("--no-cache-dirs: exit %d\n%s", o.code, o.output())
	}
}
