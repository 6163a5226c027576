package runenv

import (
	"os/exec"
	"strings"
	"testing"
)

func TestRunnerNameAndSubdomain(t *testing.T) {
	for in, want := range map[string]string{
		"Layerfile":               "main-layerfile",
		"Tests/Cypress/Layerfile": "Tests-Cypress",
		".layerfiles/a/Layerfile": ".layerfiles-a",
	} {
		if got := RunnerName(in); got != want {
			t.Errorf("RunnerName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Subdomain("Feature/New_UI!"); got != "feature-new-ui" {
		t.Errorf("Subdomain = %q", got)
	}
}

func TestInspectGitRepo(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(cmd.Environ(), "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@b", "GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@b")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	run("init", "-q", "-b", "main")
	run("commit", "-q", "--allow-empty", "-m", "first commit")
	run("checkout", "-q", "-b", "feature/x")
	run("remote", "add", "origin", "git@example.com:acme/widgets.git")
	r := Inspect(dir)
	if r.Branch != "feature/x" || r.DefaultBranch != "main" || len(r.Commit) != 40 || r.Title != "first commit" {
		t.Fatalf("%+v", r)
	}
	if r.Name != "widgets" || r.Owner != "acme" || r.Scope != "git@example.com:acme/widgets.git" {
		t.Fatalf("%+v", r)
	}
	env := strings.Join(Builtins(r, "job1", "main-layerfile", 0, "localhost"), "\n")
	for _, want := range []string{"CI=true", "GIT_SHORT_COMMIT=" + r.Commit[:12], "SUBDOMAIN=feature-x", "LAYERCI_BRANCH=feature/x", "RETRY_INDEX=0"} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("builtins lack %s", want)
		}
	}
	outside := Inspect(t.TempDir())
	if outside.Branch != "main" || outside.Scope == "" {
		t.Fatalf("outside git: %+v", outside)
	}
}
