package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-ci/strata/internal/store"
)

// Two repositories' root Layerfiles are told apart: ls shows each
// snapshot's Layerfile with its repository folder.
func TestLsNamesTheRepository(t *testing.T) {
	home := t.TempDir()
	t.Setenv("STRATA_HOME", home)
	st, err := store.Open(filepath.Join(home, "store"))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	for i, repo := range []string{filepath.Join(work, "shop"), "/elsewhere/blog"} {
		a, err := st.Prepare("")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{a.Overlay(), a.StatePath()} {
			os.WriteFile(p, []byte("x"), 0o644)
		}
		if _, err := st.Commit(a, store.Layer{Key: "k", Image: "img", Repository: repo, Layerfile: "Layerfile", Step: i + 1, Instruction: "RUN true"}); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(work)
	cmd := newLsCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(nil)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"shop/Layerfile", "/elsewhere/blog/Layerfile", "2 snapshots"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ls output lacks %q:\n%s", want, out.String())
		}
	}
}
