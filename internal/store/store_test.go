package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func commitLayer(t *testing.T, s *Store, parent, key string) Layer {
	t.Helper()
	a, err := s.Prepare(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a.Overlay(), a.StatePath()} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.Commit(a, Layer{Key: key, Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPrepareCommitGet(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Prepare("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("uncommitted layer visible: %v", err)
	}
	if _, err := s.Commit(a, Layer{Key: "k"}); err == nil {
		t.Fatal("commit without disk and state succeeded")
	}
	if _, err := s.Get(a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed commit left a layer: %v", err)
	}
	if err := s.Abort(a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Dir); !os.IsNotExist(err) {
		t.Fatalf("abort left %s", a.Dir)
	}

	base := commitLayer(t, s, "", "k1")
	child := commitLayer(t, s, base.ID, "k2")
	got, err := s.Get(child.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Parent != base.ID || got.Key != "k2" || got.StateBytes == 0 {
		t.Fatalf("got %+v", got)
	}
	if _, err := s.Prepare("nope"); err == nil {
		t.Fatal("prepare on a missing parent succeeded")
	}
	var n int
	_ = s.Walk(func(Layer) error { n++; return nil })
	if n != 2 {
		t.Fatalf("walk saw %d layers, want 2", n)
	}
	if err := s.Remove(child.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(child.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("removed layer still there")
	}
}

func TestCandidatesNewestFirst(t *testing.T) {
	s, _ := Open(t.TempDir())
	l1 := commitLayer(t, s, "", "key")
	l2 := commitLayer(t, s, "", "key")
	if err := s.Record("key", l1.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Record("key", l2.ID); err != nil {
		t.Fatal(err)
	}
	c := s.Candidates("key")
	if len(c) != 2 || c[0].ID != l2.ID || c[1].ID != l1.ID {
		t.Fatalf("candidates = %v", c)
	}
	_ = s.Remove(l2.ID)
	if c := s.Candidates("key"); len(c) != 1 || c[0].ID != l1.ID {
		t.Fatalf("after remove: %v", c)
	}
	if c := s.Candidates("other"); c != nil {
		t.Fatalf("unknown key: %v", c)
	}
}

func TestRepeatableFallsBackToDefaultBranch(t *testing.T) {
	s, _ := Open(t.TempDir())
	onMain := commitLayer(t, s, "", "k")
	if err := s.SetRepeatable("repo", "main", "k", onMain.ID); err != nil {
		t.Fatal(err)
	}
	got, ok := s.Repeatable("repo", "k", "feature/x", "main")
	if !ok || got.ID != onMain.ID {
		t.Fatalf("fallback: %v %v", got.ID, ok)
	}
	onFeature := commitLayer(t, s, "", "k")
	_ = s.SetRepeatable("repo", "feature/x", "k", onFeature.ID)
	got, _ = s.Repeatable("repo", "k", "feature/x", "main")
	if got.ID != onFeature.ID {
		t.Fatalf("branch state not preferred: %v", got.ID)
	}
	if _, ok := s.Repeatable("repo", "other", "main"); ok {
		t.Fatal("unknown key found")
	}
	if refs := s.RepeatableRefs(); !refs[onMain.ID] || !refs[onFeature.ID] {
		t.Fatalf("refs = %v", refs)
	}
}

func TestSafeName(t *testing.T) {
	if got := safeName("main"); got != "main" {
		t.Fatalf("safeName(main) = %q", got)
	}
	for _, s := range []string{"feature/x", "../../etc", ".hidden", ""} {
		got := safeName(s)
		if filepath.Base(got) != got || got == s || got[0] == '.' {
			t.Fatalf("safeName(%q) = %q", s, got)
		}
	}
}

func TestGCRemovesUnfinishedThenLeastRecentlyUsedLeaves(t *testing.T) {
	s, _ := Open(t.TempDir())
	half, _ := s.Prepare("")
	os.WriteFile(half.Overlay(), make([]byte, 4096), 0o644)
	base := commitLayer(t, s, "", "k1")
	old := commitLayer(t, s, base.ID, "k2")
	recent := commitLayer(t, s, base.ID, "k3")
	s.Touch(recent.ID)
	past := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(s.layerDir(old.ID), metaFile), past, past)

	one := old.DiskBytes + old.StateBytes
	res, err := s.GC(2 * one)
	if err != nil {
		t.Fatal(err)
	}
	if res.Unfinished != 1 || res.Removed != 1 {
		t.Fatalf("%+v", res)
	}
	if _, err := s.Get(old.ID); err == nil {
		t.Fatal("the least recently used leaf survived")
	}
	for _, id := range []string{base.ID, recent.ID} {
		if _, err := s.Get(id); err != nil {
			t.Fatalf("%s removed: %v", id, err)
		}
	}
	// A limit of zero empties the store, children before parents.
	if _, err := s.GC(0); err != nil {
		t.Fatal(err)
	}
	n := 0
	s.Walk(func(Layer) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d layers left", n)
	}
}

// A layer whose metadata cannot be read hides its parent: GC must not take
// that parent for a leaf (its disk and memory chunks are still needed).
func TestGCKeepsEverythingWhenMetadataIsUnreadable(t *testing.T) {
	s, _ := Open(t.TempDir())
	base := commitLayer(t, s, "", "k1")
	child := commitLayer(t, s, base.ID, "k2")
	os.WriteFile(filepath.Join(s.layerDir(child.ID), metaFile), []byte("{not json"), 0o644)
	res, err := s.GC(0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Unreadable != 1 || res.Removed != 0 {
		t.Fatalf("%+v", res)
	}
	if _, err := s.Get(base.ID); err != nil {
		t.Fatalf("the parent of an unreadable layer was removed: %v", err)
	}
}
