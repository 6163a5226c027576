package plan

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/strata-ci/strata/internal/layerfile"
)

// writeRepo creates files (path → content) under a temporary root.
func writeRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func rels(root string, paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, relTo(root, p))
	}
	return out
}

func TestDiscover(t *testing.T) {
	root := writeRepo(t, map[string]string{
		"Layerfile":                  "FROM vm/debian:12\n",
		"base/Layerfile":             "FROM /Layerfile\n",
		".layerfiles/e2e/Layerfile":  "FROM /base\n",
		".git/Layerfile":             "x",
		".git/modules/x/Layerfile":   "x",
		".strata/runs/Layerfile":     "x",
		"web/layerfile":              "FROM vm/debian:12\n",
		"web/Layerfile.bak":          "x",
		"deep/a/b/c/Layerfile":       "FROM vm/debian:12\n",
		"node_modules/pkg/Layerfile": "FROM vm/debian:12\n",
	})
	if err := os.Mkdir(filepath.Join(root, "dirnamed"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "dirnamed", "Layerfile"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "base"), filepath.Join(root, "linkdir")); err != nil {
		t.Fatal(err)
	}
	got, err := Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".layerfiles/e2e/Layerfile", "Layerfile", "base/Layerfile", "deep/a/b/c/Layerfile", "node_modules/pkg/Layerfile"}
	if !reflect.DeepEqual(rels(root, got), want) {
		t.Errorf("Discover = %q, want %q", rels(root, got), want)
	}
	for _, p := range got {
		if !filepath.IsAbs(p) {
			t.Errorf("%s is not absolute", p)
		}
	}
	if _, err := Discover(filepath.Join(root, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Discover(missing) error = %v, want fs.ErrNotExist", err)
	}
}

func TestResolveTarget(t *testing.T) {
	root := writeRepo(t, map[string]string{
		"Layerfile":          "FROM vm/debian:12\n",
		"base/Layerfile":     "FROM vm/debian:12\n",
		"svc/one/Layerfile":  "FROM ../../base\n",
		"svc/notes.txt":      "x",
		"empty/readme":       "x",
		".git/x/Layerfile":   "x",
		"Other/Layerfile":    "FROM vm/debian:12\n",
		"svc/layerfile.orig": "x",
	})
	from := filepath.Join(root, "svc", "one", "Layerfile")
	ok := []struct{ target, want string }{
		{"../../base", "base/Layerfile"},
		{"/base", "base/Layerfile"},
		{"/base/", "base/Layerfile"},
		{"/base/Layerfile", "base/Layerfile"},
		{"../../base/Layerfile", "base/Layerfile"},
		{"/Layerfile", "Layerfile"},
		{"/", "Layerfile"},
		{".", "svc/one/Layerfile"},
		{"./Layerfile", "svc/one/Layerfile"},
	}
	for _, tc := range ok {
		got, err := ResolveTarget(root, from, tc.target)
		if err != nil {
			t.Errorf("ResolveTarget(%q): %v", tc.target, err)
			continue
		}
		if relTo(root, got) != tc.want {
			t.Errorf("ResolveTarget(%q) = %s, want %s", tc.target, relTo(root, got), tc.want)
		}
	}
	bad := []struct{ target, msg, hint string }{
		{"../missing", "../missing: no such file or folder (/svc/missing)", ""},
		{"/BASE", "/BASE: no such file or folder (/BASE)", "paths are case-sensitive: /base"},
		{"../../other", "../../other: no such file or folder (/other)", "paths are case-sensitive: ../../Other"},
		{"/LAYERFILE", "/LAYERFILE: no such file or folder (/LAYERFILE)", "paths are case-sensitive: /Layerfile"},
		{"/empty", "/empty: folder /empty has no Layerfile", ""},
		{"../notes.txt", "../notes.txt: /svc/notes.txt is not a Layerfile (only files named Layerfile are)", ""},
		{"../../../outside", "../../../outside: points outside the repository", "paths starting with / are relative to the repository root, e.g. /base"},
		{"/.git/x", "/.git/x: is inside .git, where Layerfiles are not run", ""},
	}
	for _, tc := range bad {
		_, err := ResolveTarget(root, from, tc.target)
		var te *TargetError
		if !errors.As(err, &te) {
			t.Errorf("ResolveTarget(%q) error = %v, want a *TargetError", tc.target, err)
			continue
		}
		if te.Error() != tc.msg || te.Hint != tc.hint {
			t.Errorf("ResolveTarget(%q) = %q (hint %q), want %q (hint %q)", tc.target, te.Error(), te.Hint, tc.msg, tc.hint)
		}
	}
	if _, err := ResolveTarget(root, from, "../missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing target error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestLoadGraph(t *testing.T) {
	root := writeRepo(t, map[string]string{
		"Layerfile":               "FROM vm/debian:12\nRUN make\n",
		"base/Layerfile":          "FROM /Layerfile\n",
		"a/Layerfile":             "FROM ../base\n",
		"b/Layerfile":             "FROM /base/Layerfile\nWAIT /a ../a /Layerfile\n",
		".layerfiles/x/Layerfile": "FROM /base\n",
		"deploy/Layerfile":        "FROM vm/debian:12\nWAIT /a /b\nBUTTON deploy?\n",
		"broken/Layerfile":        "FROM ../nowhere\nWAIT /a /gone\n",
		"lib/Layerfile":           "FROM webapp.io/base:latest\n",
	})
	r, ds, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, strings.ReplaceAll(d.String(), root+"/", ""))
	}
	want := []string{
		"broken/Layerfile:1:6: error: FROM target ../nowhere: no such file or folder (/nowhere)",
		"broken/Layerfile:2:9: error: WAIT target /gone: no such file or folder (/gone)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("diagnostics:\ngot  %q\nwant %q", got, want)
	}
	if len(r.Files) != 8 {
		t.Fatalf("got %d files, want 8", len(r.Files))
	}
	f := func(p string) *layerfile.File { return r.File(filepath.Join(root, p)) }
	name := func(x *layerfile.File) string {
		if x == nil {
			return "<nil>"
		}
		return r.Rel(x.Path)
	}
	parents := map[string]string{
		"Layerfile": "<nil>", "base/Layerfile": "Layerfile", "a/Layerfile": "base/Layerfile",
		"b/Layerfile": "base/Layerfile", ".layerfiles/x/Layerfile": "base/Layerfile",
		"deploy/Layerfile": "<nil>", "broken/Layerfile": "<nil>", "lib/Layerfile": "<nil>",
	}
	for p, want := range parents {
		if got := name(r.Parent(f(p))); got != want {
			t.Errorf("Parent(%s) = %s, want %s", p, got, want)
		}
	}
	var waits []string
	for _, w := range r.Waits(f("b/Layerfile")) {
		waits = append(waits, name(w))
	}
	if want := []string{"a/Layerfile", "Layerfile"}; !reflect.DeepEqual(waits, want) {
		t.Errorf("Waits(b) = %q, want %q (duplicates removed)", waits, want)
	}
	waits = nil
	for _, w := range r.Waits(f("broken/Layerfile")) {
		waits = append(waits, name(w))
	}
	if want := []string{"a/Layerfile"}; !reflect.DeepEqual(waits, want) {
		t.Errorf("Waits(broken) = %q, want %q", waits, want)
	}
}

func TestLoadCycles(t *testing.T) {
	root := writeRepo(t, map[string]string{
		"d/Layerfile":    "FROM /e\n",
		"e/Layerfile":    "FROM vm/debian:12\nRUN x\nWAIT ../f\n",
		"f/Layerfile":    "FROM ../d/Layerfile\n",
		"self/Layerfile": "FROM vm/debian:12\nWAIT .\n",
		"ok/Layerfile":   "FROM /e\n",
	})
	_, ds, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, strings.ReplaceAll(d.String(), root+"/", ""))
	}
	const hint = " (hint: a Layerfile cannot build on or wait for itself, directly or through others; remove one of these lines)"
	want := []string{
		"d/Layerfile:1:6: error: FROM/WAIT cycle: d/Layerfile (FROM /e) -> e/Layerfile (WAIT ../f) -> f/Layerfile (FROM ../d/Layerfile) -> d/Layerfile" + hint,
		"e/Layerfile:3:6: error: FROM/WAIT cycle: e/Layerfile (WAIT ../f) -> f/Layerfile (FROM ../d/Layerfile) -> d/Layerfile (FROM /e) -> e/Layerfile" + hint,
		"f/Layerfile:1:6: error: FROM/WAIT cycle: f/Layerfile (FROM ../d/Layerfile) -> d/Layerfile (FROM /e) -> e/Layerfile (WAIT ../f) -> f/Layerfile" + hint,
		"self/Layerfile:2:6: error: FROM/WAIT cycle: self/Layerfile (WAIT .) -> self/Layerfile" + hint,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("diagnostics:\ngot  %q\nwant %q", got, want)
	}
}

func TestLoadFilesExtra(t *testing.T) {
	root := writeRepo(t, map[string]string{
		"base/Layerfile":   "FROM vm/debian:12\n",
		"ci/Layerfile.dev": "FROM ../base\nWAIT /nope\n",
	})
	r, ds, err := LoadFiles(root, []string{filepath.Join(root, "ci", "Layerfile.dev")})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Files) != 2 {
		t.Fatalf("got %d files, want 2", len(r.Files))
	}
	if p := r.Parent(r.File(filepath.Join(root, "ci", "Layerfile.dev"))); p == nil || r.Rel(p.Path) != "base/Layerfile" {
		t.Errorf("Parent of the extra file = %v, want base/Layerfile", p)
	}
	if len(ds) != 1 || !strings.HasSuffix(ds[0].String(), "ci/Layerfile.dev:2:6: error: WAIT target /nope: no such file or folder (/nope)") {
		t.Errorf("diagnostics = %v", ds)
	}
}
