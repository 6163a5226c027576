package repofiles

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		abs := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(abs, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func guests(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Guest)
	}
	return out
}

func TestSelect(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"app/main.go":       "package main",
		"app/sub/x.txt":     "x",
		"app/debug.log":     "noise",
		"app/.git/HEAD":     "ref",
		"README.md":         "hi",
		".layerignore":      "*.log\n",
		"svc/Layerfile":     "FROM vm/debian:12",
		"svc/local.txt":     "l",
		"app/keep/.gitkeep": "",
	})
	ig := NewIgnorer(root)
	cases := []struct {
		name string
		c    Copy
		want []string
	}{
		{"dir contents into dest", Copy{Sources: []string{"app"}, Dest: "/src"},
			[]string{"/src/keep", "/src/keep/.gitkeep", "/src/main.go", "/src/sub", "/src/sub/x.txt"}},
		{"file to file", Copy{Sources: []string{"README.md"}, Dest: "doc.md", Workdir: "/root"},
			[]string{"/root/doc.md"}},
		{"file into dir", Copy{Sources: []string{"README.md"}, Dest: "/d/"}, []string{"/d/README.md"}},
		{"relative to Layerfile folder", Copy{LayerfileDir: "svc", Sources: []string{"local.txt"}, Dest: "/x/"},
			[]string{"/x/local.txt"}},
		{"absolute from repo root", Copy{LayerfileDir: "svc", Sources: []string{"/README.md"}, Dest: "/x/"},
			[]string{"/x/README.md"}},
		{"glob", Copy{Sources: []string{"app/*.go"}, Dest: "/g/"}, []string{"/g/main.go"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.Root = root
			got, err := Select(tc.c, ig)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(guests(got), tc.want) {
				t.Fatalf("got %v\nwant %v", guests(got), tc.want)
			}
		})
	}
	if _, err := Select(Copy{Root: root, Sources: []string{"a", "b"}, Dest: "/x"}, ig); err == nil {
		t.Error("two sources without a trailing / accepted")
	}
	if _, err := Select(Copy{Root: root, Sources: []string{"../etc"}, Dest: "/x/"}, ig); err == nil {
		t.Error("source outside the repository accepted")
	}
	// The whole repository: .git and ignored files stay out.
	all, err := Select(Copy{Root: root, Sources: []string{"/"}, Dest: "/root"}, ig)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range guests(all) {
		if filepath.Base(g) == "debug.log" || filepath.Base(g) == "HEAD" {
			t.Errorf("%s should not be copied", g)
		}
	}
}

func TestIgnoreRules(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		".layerignore":     "/build\nnode_modules/\n**/tmp/*.dat\n*.bak\n!keep.bak\n",
		"sub/.layerignore": "secret.txt\n",
	})
	ig := NewIgnorer(root)
	cases := []struct {
		path string
		dir  bool
		want bool
	}{
		{"build", true, true},
		{"sub/build", true, false}, // anchored to the root
		{"node_modules", true, true},
		{"a/node_modules", true, true},
		{"node_modules", false, false}, // dir-only rule
		{"x/tmp/a.dat", false, true},
		{"tmp/a.dat", false, true},
		{"a.bak", false, true},
		{"d/keep.bak", false, false},
		{"sub/secret.txt", false, true},
		{"secret.txt", false, false},
		{"main.go", false, false},
	}
	for _, c := range cases {
		if got := ig.Ignored(c.path, c.dir); got != c.want {
			t.Errorf("Ignored(%q, dir=%v) = %v, want %v", c.path, c.dir, got, c.want)
		}
	}
}

func TestDigestNeverTrustsSizeAndMtimeAlone(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"f": "aaaa"})
	cache := filepath.Join(t.TempDir(), "stat.json")
	d := NewDigester(root, cache)
	first, err := d.Digest("f")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Save(); err != nil {
		t.Fatal(err)
	}
	// Same size, same mtime, different content: ctime changes, so the
	// digest must too.
	fi, _ := os.Stat(filepath.Join(root, "f"))
	time.Sleep(10 * time.Millisecond)
	writeTree(t, root, map[string]string{"f": "bbbb"})
	os.Chtimes(filepath.Join(root, "f"), fi.ModTime(), fi.ModTime())
	d2 := NewDigester(root, cache)
	second, err := d2.Digest("f")
	if err != nil {
		t.Fatal(err)
	}
	if first == second {
		t.Fatal("content change with equal size and mtime went unnoticed")
	}
}

func TestWriteTar(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"a/b.txt": "hello"})
	es, err := Select(Copy{Root: root, Sources: []string{"a"}, Dest: "/dst"}, NewIgnorer(root))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	del := func(name string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, PAXRecords: map[string]string{"X.delete": "1"}}
	}
	now := time.Unix(1700000000, 0)
	if err := WriteTar(&buf, root, es, []string{"/dst/gone"}, Owner{UID: 1000, GID: 1000}, now, del); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		if h.Name == "dst/b.txt" && (h.Uid != 1000 || !h.ModTime.Equal(now) || h.Size != 5) {
			t.Errorf("header %+v", h)
		}
	}
	if want := []string{"dst/gone", "dst/b.txt"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
}

func TestNamedIgnoredPathsStayOut(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{".layerignore": "secrets/\n", "secrets/key": "k", "ok.txt": "ok"})
	ig := NewIgnorer(root)
	for _, src := range []string{"secrets", "secrets/key"} {
		got, err := Select(Copy{Root: root, Sources: []string{src}, Dest: "/x/"}, ig)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 0 {
			t.Errorf("COPY %s brought in %v", src, guests(got))
		}
	}
}
