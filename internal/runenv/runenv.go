// Package runenv derives the built-in variables every step sees (SPEC §4)
// from the repository's git state, with sensible values outside git.
package runenv

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Repo describes the repository a run happens in.
type Repo struct {
	Root          string
	Branch        string // "" outside git or on a detached HEAD without a branch
	DefaultBranch string
	Commit        string
	Tag           string // git describe --always
	Title         string // first line of the commit message
	Name, Owner   string
	// Scope identifies the repository across clones: its origin URL (plus
	// the folder inside it, when run on a sub-folder) when it has one, else
	// its absolute path.
	Scope string
}

// Inspect reads git state from root (no error outside git: fields stay
// empty or get defaults).
func Inspect(root string) Repo {
	abs, err := filepath.Abs(root)
	if err != nil {
		abs = root
	}
	r := Repo{Root: abs}
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", abs}, args...)...).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	r.Branch = git("rev-parse", "--abbrev-ref", "HEAD")
	if r.Branch == "HEAD" {
		r.Branch = ""
	}
	r.Commit = git("rev-parse", "HEAD")
	r.Tag = git("describe", "--always", "--tags")
	r.Title = git("log", "-1", "--format=%s")
	origin := git("remote", "get-url", "origin")
	if def := git("symbolic-ref", "--short", "refs/remotes/origin/HEAD"); def != "" {
		r.DefaultBranch = strings.TrimPrefix(def, "origin/")
	}
	if r.DefaultBranch == "" {
		for _, b := range []string{"main", "master"} {
			if git("rev-parse", "--verify", "--quiet", "refs/heads/"+b) != "" {
				r.DefaultBranch = b
				break
			}
		}
	}
	if r.DefaultBranch == "" {
		r.DefaultBranch = "main"
	}
	if r.Branch == "" {
		r.Branch = r.DefaultBranch
	}
	r.Name, r.Owner = filepath.Base(abs), "local"
	if origin != "" {
		r.Scope = origin
		if prefix := git("rev-parse", "--show-prefix"); prefix != "" {
			r.Scope += "//" + strings.TrimSuffix(prefix, "/")
		}
		trimmed := strings.TrimSuffix(strings.TrimRight(origin, "/"), ".git")
		parts := strings.FieldsFunc(trimmed, func(c rune) bool { return c == '/' || c == ':' })
		if len(parts) >= 2 {
			r.Name, r.Owner = parts[len(parts)-1], parts[len(parts)-2]
		}
	} else {
		r.Scope = abs
	}
	return r
}

var nonURLSafe = regexp.MustCompile(`[^a-z0-9-]+`)

// Subdomain is the branch made URL-safe.
func Subdomain(branch string) string {
	s := nonURLSafe.ReplaceAllString(strings.ToLower(branch), "-")
	s = strings.Trim(s, "-")
	if len(s) > 63 {
		s = s[:63]
	}
	if s == "" {
		s = "branch"
	}
	return s
}

// NewJobID returns a fresh job identifier.
func NewJobID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Builtins are the variables of SPEC §4 for one runner of one job.
func Builtins(r Repo, jobID, runnerID string, retry int, websiteHost string) []string {
	short := r.Commit
	if len(short) > 12 {
		short = short[:12]
	}
	vars := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8",
		"CI=true", "CI_MACHINE=true", "IS_CI_MACHINE=true", "IN_CI_MACHINE=true", "IN_CI=true",
		"DEBIAN_FRONTEND=noninteractive",
		"GIT_BRANCH=" + r.Branch,
		"SUBDOMAIN=" + Subdomain(r.Branch),
		"GIT_COMMIT=" + r.Commit,
		"GIT_SHORT_COMMIT=" + short,
		"GIT_TAG=" + r.Tag,
		"GIT_COMMIT_TITLE=" + r.Title,
		"JOB_ID=" + jobID,
		"RUNNER_ID=" + runnerID,
		"RETRY_INDEX=" + itoa(retry),
		"REPOSITORY_NAME=" + r.Name,
		"REPOSITORY_OWNER=" + r.Owner,
		"EXPOSE_WEBSITE_HOST=" + websiteHost,
		"LAYERCI=true",
		"LAYERCI_JOB_ID=" + jobID,
		"LAYERCI_RUNNER_ID=" + runnerID,
		"LAYERCI_BRANCH=" + r.Branch,
		"LAYERCI_REPO_NAME=" + r.Name,
		"LAYERCI_REPO_OWNER=" + r.Owner,
	}
	return vars
}

func itoa(n int) string {
	const digits = "0123456789"
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{digits[n%10]}, b...)
		n /= 10
	}
	return string(b)
}

// RunnerName derives a runner's name from its Layerfile path relative to
// the repository root: "Tests/Cypress/Layerfile" -> "Tests-Cypress", the
// root Layerfile -> "main-layerfile".
func RunnerName(rel string) string {
	dir := filepath.ToSlash(filepath.Dir(rel))
	if dir == "." || dir == "" {
		return "main-layerfile"
	}
	return strings.ReplaceAll(strings.Trim(dir, "/"), "/", "-")
}
