package layerfile

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/corpus.golden")

// corpusDir finds the shared corpus of real Layerfiles: $STRATA_CORPUS, or
// shared/corpus/layerfiles beside the repository root. ok is false (and the
// test skipped) when it is absent, unless STRATA_E2E_REQUIRED=1.
func corpusDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("STRATA_CORPUS")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			tb.Fatal(err)
		}
		dir = filepath.Join(filepath.Dir(root), "shared", "corpus", "layerfiles")
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		if os.Getenv("STRATA_E2E_REQUIRED") == "1" {
			tb.Fatalf("corpus %s not found (set STRATA_CORPUS)", dir)
		}
		tb.Skipf("corpus %s not found (set STRATA_CORPUS)", dir)
	}
	return dir
}

// repoRoot walks up from the package directory to the folder with go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// corpusFiles returns the corpus files as relative paths, sorted.
func corpusFiles(tb testing.TB, dir string) []string {
	tb.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		tb.Fatalf("no files in corpus %s", dir)
	}
	return files
}

// TestCorpus gives every real Layerfile a verdict and pins them in
// testdata/corpus.golden (regenerate with go test -run TestCorpus -update).
func TestCorpus(t *testing.T) {
	dir := corpusDir(t)
	var out bytes.Buffer
	counts := map[string]int{}
	for _, rel := range corpusFiles(t, dir) {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		_, ds := Parse(rel, data)
		verdict := "ok"
		switch {
		case HasErrors(ds):
			verdict = "errors"
		case len(ds) > 0:
			verdict = "warnings"
		}
		counts[verdict]++
		fmt.Fprintf(&out, "== %s: %s\n", rel, verdict)
		for _, d := range ds {
			if d.Pos.File != rel || d.Pos.Line < 1 || d.Pos.Col < 1 || d.Message == "" {
				t.Errorf("%s: diagnostic without a proper position or message: %#v", rel, d)
			}
			fmt.Fprintln(&out, d.String())
		}
	}
	fmt.Fprintf(&out, "== total: %d ok, %d warnings, %d errors\n", counts["ok"], counts["warnings"], counts["errors"])
	golden := filepath.Join("testdata", "corpus.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestCorpus -update)", err)
	}
	if got := out.String(); got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("corpus verdicts differ from %s at line %d:\ngot  %s\nwant %s\n(run go test -run TestCorpus -update after checking the change)", golden, i+1, g, w)
			}
		}
	}
}

// BenchmarkParseCorpus parses every corpus file once per iteration and
// reports ns per file.
func BenchmarkParseCorpus(b *testing.B) {
	dir := corpusDir(b)
	files := corpusFiles(b, dir)
	datas := make([][]byte, len(files))
	size := 0
	for i, rel := range files {
		d, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			b.Fatal(err)
		}
		datas[i] = d
		size += len(d)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	for b.Loop() {
		for i, d := range datas {
			Parse(files[i], d)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(files)), "ns/file")
}
