package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/plan"
)

func init() { commandRegistry = append(commandRegistry, newLintCmd) }

type lintFlags struct {
	format string
	strict bool
}

func newLintCmd() *cobra.Command {
	var f lintFlags
	cmd := &cobra.Command{
		Use:   "lint [path...]",
		Short: "Check Layerfiles and the FROM/WAIT graph between them without running anything",
		Long: `Lint parses every Layerfile under the given paths (repository roots, folders or
single files; default: the current folder) and checks that FROM and WAIT
targets exist and form no cycle. It reports every problem of every file, as
"file:line:col: error: message (hint: ...)", sorted by file and line.

A folder is checked as the repository root, exactly as "strata run <folder>"
would run it: FROM /base resolves from that folder. A single file is checked
as part of the repository holding it (the nearest parent with a .git).

Exit codes: 0 no errors (warnings allowed), 1 warnings only and --strict,
2 errors, or a path that does not exist.`,
		Example: `  strata lint
  strata lint services/web/Layerfile
  strata lint --format json . | jq .message`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return lint(cmd.OutOrStdout(), cmd.ErrOrStderr(), args, f)
		},
	}
	cmd.Flags().StringVar(&f.format, "format", "text", "output format: text, or json (one JSON object per line per diagnostic)")
	cmd.Flags().BoolVar(&f.strict, "strict", false, "exit 1 when there are warnings")
	return cmd
}

// lintScope is what to report for one repository root.
type lintScope struct {
	folders []string // report files under these folders
	files   []string // and these files (need not be named Layerfile)
}

func lint(stdout, stderr io.Writer, args []string, f lintFlags) error {
	if f.format != "text" && f.format != "json" {
		return withExit(2, fmt.Errorf("lint: unknown --format %q (text or json)", f.format))
	}
	if len(args) == 0 {
		args = []string{"."}
	}
	scopes := map[string]*lintScope{}
	var roots []string
	for _, a := range args {
		abs, err := filepath.Abs(a)
		if err != nil {
			return withExit(2, fmt.Errorf("lint %s: %w", a, err))
		}
		st, err := os.Stat(abs)
		if err != nil {
			return withExit(2, fmt.Errorf("lint %s: no such file or folder", a))
		}
		dir := abs
		if !st.IsDir() {
			dir = filepath.Dir(abs)
		}
		// The same root as `strata run` takes for a folder, so that
		// lint and run agree on every FROM and WAIT target.
		root := dir
		if !st.IsDir() {
			root = repoRootOf(dir)
		}
		s := scopes[root]
		if s == nil {
			s = &lintScope{}
			scopes[root] = s
			roots = append(roots, root)
		}
		if st.IsDir() {
			s.folders = append(s.folders, abs)
		} else {
			s.files = append(s.files, abs)
		}
	}

	var diags []layerfile.Diagnostic
	checked := map[string]bool{}
	for _, root := range roots {
		s := scopes[root]
		repo, ds, err := plan.LoadFiles(root, s.files)
		if err != nil {
			return withExit(3, fmt.Errorf("lint: %w", err))
		}
		for _, lf := range repo.Files {
			if s.covers(lf.Path) {
				checked[lf.Path] = true
			}
		}
		if cfg, err := image.LoadConfig(); err == nil {
			ds = append(ds, imageDiagnostics(repo, cfg)...)
		}
		for _, d := range ds {
			if s.covers(d.Pos.File) {
				diags = append(diags, d)
			}
		}
	}
	if len(checked) == 0 {
		return withExit(2, fmt.Errorf("lint: no Layerfile found in %s", strings.Join(args, ", ")))
	}

	// Dedupe (a file can be reached from two arguments) and show paths
	// relative to the working directory.
	cwd, _ := os.Getwd()
	seen := map[string]bool{}
	var out []layerfile.Diagnostic
	for _, d := range diags {
		if rel, err := filepath.Rel(cwd, d.Pos.File); err == nil && cwd != "" {
			d.Pos.File = rel
		}
		if k := d.String(); !seen[k] {
			seen[k] = true
			out = append(out, d)
		}
	}
	layerfile.SortDiagnostics(out)

	errs, warns := 0, 0
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	for _, d := range out {
		if d.Severity == layerfile.Error {
			errs++
		} else {
			warns++
		}
		if f.format == "json" {
			if err := enc.Encode(jsonDiagnostic{File: d.Pos.File, Line: d.Pos.Line, Col: d.Pos.Col,
				Severity: d.Severity.String(), Message: d.Message, Hint: d.Hint}); err != nil {
				return withExit(3, fmt.Errorf("lint: %w", err))
			}
		} else {
			fmt.Fprintln(stdout, d.String())
		}
	}
	if f.format == "text" {
		fmt.Fprintf(stderr, "%s in %s\n", summary(errs, warns), plural(len(checked), "Layerfile"))
	}
	switch {
	case errs > 0:
		return withExit(2, fmt.Errorf("lint: %s", summary(errs, warns)))
	case warns > 0 && f.strict:
		return withExit(1, fmt.Errorf("lint: %s (--strict)", summary(errs, warns)))
	}
	return nil
}

// jsonDiagnostic is one line of lint --format json.
type jsonDiagnostic struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Col      int    `json:"col"`
	Severity string `json:"severity"`
	Message  string `json:"message"`
	Hint     string `json:"hint"`
}

func (s *lintScope) covers(p string) bool {
	if slices.Contains(s.files, p) {
		return true
	}
	for _, d := range s.folders {
		if p == d || strings.HasPrefix(p, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// repoRootOf returns the nearest folder at or above dir holding .git, or
// dir itself when there is none.
func repoRootOf(dir string) string {
	for d := dir; ; {
		if _, err := os.Stat(filepath.Join(d, ".git")); err == nil {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return dir
		}
		d = parent
	}
}

func summary(errs, warns int) string {
	if errs == 0 && warns == 0 {
		return "no problems"
	}
	return plural(errs, "error") + ", " + plural(warns, "warning")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
