package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func lintRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return -1
}

// runLint runs lint from dir and returns stdout, stderr and the exit code.
func runLint(t *testing.T, dir string, f lintFlags, args ...string) (string, string, int) {
	t.Helper()
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	err := lint(&out, &errOut, args, f)
	return out.String(), errOut.String(), exitCode(err)
}

func TestLintExitCodesAndOutput(t *testing.T) {
	root := lintRepo(t, map[string]string{
		"base/Layerfile":       "FROM vm/debian:12\nRUN make\n",
		"web/Layerfile":        "FROM /base\nRUN BACKGROUND npm start\nEXPOSE WEBSITE http://localhost:9000/app\n",
		"api/Layerfile":        "FROM ../base\nRUN make\nMEMORY 4G\n",
		"clean/Layerfile":      "FROM vm/debian:12\nRUN true\n",
		"cycle/a/Layerfile":    "FROM ../b\n",
		"cycle/b/Layerfile":    "FROM vm/debian:12\nWAIT ../a\n",
		".git/Layerfile":       "garbage\n",
		"notes/Layerfile.md":   "not a Layerfile\n",
		"graph/base/Layerfile": "FROM vm/debian:12\n",
		"graph/b/Layerfile":    "FROM /base\nRUN true\n",
	})
	text := lintFlags{format: "text"}

	out, errOut, code := runLint(t, root, text)
	if code != 2 {
		t.Errorf("lint . exit = %d, want 2", code)
	}
	want := strings.Join([]string{
		"api/Layerfile:3:1: warning: MEMORY after the first RUN (line 2): the VM is already running with the memory set before it (hint: move MEMORY 4G above line 2)",
		"cycle/a/Layerfile:1:6: error: FROM/WAIT cycle: cycle/a/Layerfile (FROM ../b) -> cycle/b/Layerfile (WAIT ../a) -> cycle/a/Layerfile (hint: a Layerfile cannot build on or wait for itself, directly or through others; remove one of these lines)",
		"cycle/b/Layerfile:2:6: error: FROM/WAIT cycle: cycle/b/Layerfile (WAIT ../a) -> cycle/a/Layerfile (FROM ../b) -> cycle/b/Layerfile (hint: a Layerfile cannot build on or wait for itself, directly or through others; remove one of these lines)",
		"web/Layerfile:3:16: error: the location \"http://localhost:9000/app\" contains a path (hint: put the path in its own argument: EXPOSE WEBSITE localhost:9000 /app)",
		"",
	}, "\n")
	if out != want {
		t.Errorf("lint . output:\n%s\nwant:\n%s", out, want)
	}
	if errOut != "3 errors, 1 warning in 8 Layerfiles\n" {
		t.Errorf("stderr = %q", errOut)
	}

	// A folder is a repository root, as for `strata run <folder>`.
	if out, _, code := runLint(t, filepath.Join(root, "clean"), text); code != 0 || out != "" {
		t.Errorf("lint in clean/: exit %d, output %q; want 0 and nothing", code, out)
	}
	if out, _, code := runLint(t, root, text, "graph"); code != 0 || out != "" {
		t.Errorf("lint graph (FROM /base inside it): exit %d, output %q; want 0 and nothing", code, out)
	}
	if out, _, code := runLint(t, root, text, "web"); code != 2 || !strings.Contains(out, "web/Layerfile:1:6: error: FROM target /base") {
		t.Errorf("lint web (its own root, no base inside): exit %d, output %q", code, out)
	}
	// A file belongs to the repository holding it: FROM ../base resolves.
	if _, _, code := runLint(t, root, text, "api/Layerfile"); code != 0 {
		t.Errorf("lint api/Layerfile (warnings only) exit = %d, want 0", code)
	}
	if _, _, code := runLint(t, root, lintFlags{format: "text", strict: true}, "api/Layerfile"); code != 1 {
		t.Errorf("lint --strict api/Layerfile exit = %d, want 1", code)
	}
	// A single file, from another folder: paths are shown relative to the
	// working directory.
	out, _, code = runLint(t, filepath.Join(root, "api"), text, "../web/Layerfile")
	if code != 2 || !strings.HasPrefix(out, "../web/Layerfile:3:16: error: ") || strings.Count(out, "\n") != 1 {
		t.Errorf("lint ../web/Layerfile: exit %d, output %q", code, out)
	}
	if _, _, code := runLint(t, root, text, "missing"); code != 2 {
		t.Errorf("lint missing exit = %d, want 2", code)
	}
	if _, _, code := runLint(t, root, lintFlags{format: "xml"}); code != 2 {
		t.Errorf("lint --format xml exit = %d, want 2", code)
	}
	if _, _, code := runLint(t, filepath.Join(root, "notes"), text); code != 2 {
		t.Errorf("lint of a folder without Layerfiles exit = %d, want 2", code)
	}
}

func TestLintJSON(t *testing.T) {
	root := lintRepo(t, map[string]string{
		"Layerfile": "FROM vm/debian:12\nEXPOSE 80 # web\nRUN npm start\nEXPOSE WEBSITE localhost:3000\n",
	})
	out, errOut, code := runLint(t, root, lintFlags{format: "json"})
	if code != 2 {
		t.Errorf("exit = %d, want 2", code)
	}
	if errOut != "" {
		t.Errorf("stderr = %q, want nothing in json mode", errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out)
	}
	var got []jsonDiagnostic
	for _, l := range lines {
		var d jsonDiagnostic
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, d)
	}
	want := []jsonDiagnostic{
		{File: "Layerfile", Line: 2, Col: 1, Severity: "error", Message: "EXPOSE <port> is Dockerfile syntax",
			Hint: "EXPOSE WEBSITE localhost:80 for a web preview, or EXPOSE TCP 80 for a raw port"},
		{File: "Layerfile", Line: 3, Col: 1, Severity: "warning",
			Message: `"npm start" starts a server in the foreground: this step never ends, so EXPOSE WEBSITE (line 4) is never reached`,
			Hint:    "RUN BACKGROUND npm start"},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d:\ngot  %+v\nwant %+v", i+1, got[i], want[i])
		}
	}
}

// An image name strata cannot build is a bad Layerfile for lint (and run,
// which exits 2 before any VM starts); an alias in the config makes it good.
func TestLintUnknownBaseImage(t *testing.T) {
	home := t.TempDir()
	t.Setenv("STRATA_HOME", home)
	root := lintRepo(t, map[string]string{"Layerfile": "FROM vm/debian:13\nRUN true\n"})
	out, _, code := runLint(t, root, lintFlags{format: "text"})
	if code != 2 || !strings.HasPrefix(out, `Layerfile:1:1: error: FROM unknown image "vm/debian:13"`) {
		t.Fatalf("exit %d, output %q", code, out)
	}
	os.WriteFile(filepath.Join(home, "config.json"), []byte(`{"aliases": {"vm/debian:13": "vm/debian:12"}}`), 0o644)
	if out, _, code := runLint(t, root, lintFlags{format: "text"}); code != 0 || out != "" {
		t.Fatalf("with an alias: exit %d, output %q", code, out)
	}
}
