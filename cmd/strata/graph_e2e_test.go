package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// examples/graph is the repository of issue 5: base/ starts a background
// HTTP server; a/ and b/ start FROM it and reach the server without
// starting it; b/ splits in two; deploy/ waits for both and asks for
// approval; site/ exposes two paths served by two backends.
const graphExample = "../../examples/graph"

func TestLayerfileGraph(t *testing.T) {
	c := newCLI(t)
	repo := t.TempDir()
	if err := os.CopyFS(repo, os.DirFS(graphExample)); err != nil {
		t.Fatal(err)
	}
	deploy, err := os.ReadFile(filepath.Join(repo, "deploy/Layerfile"))
	if err != nil {
		t.Fatal(err)
	}

	o := c.run(repo, "--accept-buttons", "--jobs", "3")
	if o.code != 0 {
		t.Fatalf("cold run: exit %d\n%s\n%s", o.code, o.raw, o.stderr)
	}
	pos := func(event, runner string) int {
		for i, e := range o.events {
			if e.Event == event && e.Runner == runner {
				return i
			}
		}
		t.Fatalf("no %s event for %s", event, runner)
		return -1
	}
	for _, child := range []string{"a", "b", "b-2", "site"} {
		if pos("layerfile-start", child) < pos("layerfile", "base") {
			t.Errorf("%s started before base ended", child)
		}
	}
	for _, dep := range []string{"a", "b", "b-2"} {
		if pos("layerfile-start", "deploy") < pos("layerfile", dep) {
			t.Errorf("deploy started before %s ended", dep)
		}
	}
	starts := 0
	for _, e := range o.events {
		if e.Event == "layerfile-start" && e.Runner == "base" {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("base ran %d times", starts)
	}
	out := o.output()
	for _, want := range []string{"a sees: served by base", "b copy SPLIT=0 of 2", "b copy SPLIT=1 of 2", "deploying"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	ids := regexp.MustCompile(`machine (\w+) sees`).FindAllStringSubmatch(out, -1)
	if len(ids) != 2 || ids[0][1] == ids[1][1] {
		t.Errorf("split copies should have distinct machine ids: %v", ids)
	}

	// Nothing changed: nothing executes anywhere.
	o = c.run(repo, "--accept-buttons")
	for _, e := range o.events {
		if e.Event == "step" && e.Status != "reused" {
			t.Errorf("no-op run: %s step %d %s", e.Layerfile, e.Index, e.Status)
		}
	}
	if o.code != 0 {
		t.Fatalf("no-op run exit %d", o.code)
	}

	// Without a terminal and without --accept-buttons, the BUTTON fails
	// with a message that says how to approve (deploy's step must run:
	// change its line).
	writeFile(t, filepath.Join(repo, "deploy/Layerfile"), strings.Replace(string(deploy), "echo deploying", "echo deploying now", 1))
	o = c.run(repo)
	if o.code != 1 || !strings.Contains(o.raw, "--accept-buttons") {
		t.Errorf("unapproved button: exit %d\n%s", o.code, o.raw)
	}

	// A child fails: deploy is cancelled, not failed, and says why.
	writeFile(t, filepath.Join(repo, "a/check.txt"), "broken\n")
	o = c.run(repo, "--accept-buttons")
	if o.code != 1 {
		t.Errorf("failing child: exit %d", o.code)
	}
	for _, e := range o.events {
		if e.Event == "layerfile" && e.Runner == "deploy" {
			if e.Status != "cancelled" || !strings.Contains(e.Error, "a/Layerfile failed") {
				t.Errorf("deploy: %s %q", e.Status, e.Error)
			}
		}
	}

	// The website: two paths, two backends.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, c.bin, "up", repo)
	up.Env = c.environ()
	stdout, _ := up.StdoutPipe()
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { up.Process.Kill(); up.Wait() }()
	url := ""
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), "website: "); ok {
			url = strings.TrimSpace(after)
			break
		}
	}
	if url == "" {
		t.Fatal("strata up printed no website URL")
	}
	go io.Copy(io.Discard, stdout)
	get := func(path string) string {
		resp, err := http.Get(strings.TrimSuffix(url, "/") + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	if got := get("/"); got != "served by base" {
		t.Errorf("GET / = %q", got)
	}
	if got := get("/api/"); got != "api backend" {
		t.Errorf("GET /api/ = %q", got)
	}
}
