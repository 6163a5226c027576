package memstate

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pages imitates a migration stream: n records of an 8-byte header and a
// 4 KiB page, half pseudo-random and half zero (compressible).
func pages(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	for i := range n {
		b.Write([]byte{byte(i), byte(i >> 8), byte(i >> 16), 0, 0, 0, 0, 0x08})
		page := make([]byte, 4096)
		for j := 0; j < len(page)/2; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				page[j+k] = byte(v >> (8 * k))
			}
		}
		b.Write(page)
	}
	return b.Bytes()
}

func save(t *testing.T, path string, parent *Manifest, data []byte, writeSize int) (*Manifest, Stats) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path, parent)
	if err != nil {
		t.Fatal(err)
	}
	for p := data; len(p) > 0; {
		k := min(writeSize, len(p))
		if _, err := w.Write(p[:k]); err != nil {
			t.Fatal(err)
		}
		p = p[k:]
	}
	m, st, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return m, st
}

func load(t *testing.T, path string) []byte {
	t.Helper()
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := m.WriteTo(&out); err != nil {
		t.Fatalf("read back %s: %v", path, err)
	}
	return out.Bytes()
}

func TestRoundTripAnyWriteSize(t *testing.T) {
	data := pages(1, 300)
	for _, ws := range []int{1 << 20, 4096, 777, 1} {
		if ws == 1 {
			data = data[:100<<10] // byte-at-a-time is slow; still crosses many cuts
		}
		path := filepath.Join(t.TempDir(), "a", "state")
		_, st := save(t, path, nil, data, ws)
		if got := load(t, path); !bytes.Equal(got, data) {
			t.Fatalf("write size %d: read back %d bytes differ from the %d written", ws, len(got), len(data))
		}
		if st.Size != int64(len(data)) || st.Reused != 0 || st.NewBytes <= 0 || st.NewBytes >= int64(len(data)) {
			t.Fatalf("write size %d: stats %+v for %d compressible bytes", ws, st, len(data))
		}
	}
}

func TestEmptyStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	m, _ := save(t, path, nil, nil, 1)
	if len(m.Chunks) != 0 || len(m.Packs) != 0 {
		t.Fatalf("empty stream: %+v", m)
	}
	if got := load(t, path); len(got) != 0 {
		t.Fatalf("read back %d bytes", len(got))
	}
	if _, err := os.Stat(path + PackSuffix); !os.IsNotExist(err) {
		t.Fatalf("an empty stream leaves a pack: %v", err)
	}
}

// A child state that changed a few pages stores little more than those
// pages; it reads back whole through its parent's pack.
func TestChildStoresOnlyWhatChanged(t *testing.T) {
	layers := t.TempDir()
	parentData := pages(2, 2000) // ~8 MiB
	parent, pst := save(t, filepath.Join(layers, "p", "state"), nil, parentData, 1<<20)

	child := bytes.Clone(parentData)
	const changed = 10
	for i := range changed {
		off := (i*197 + 50) * 4104
		copy(child[off+8:off+4104], pages(uint64(100+i), 1)[8:])
	}
	// A page inserted in the middle shifts everything after it.
	mid := 1000 * 4104
	child = append(child[:mid:mid], append(pages(99, 1), child[mid:]...)...)

	cm, cst := save(t, filepath.Join(layers, "c", "state"), parent, child, 1<<16)
	if got := load(t, filepath.Join(layers, "c", "state")); !bytes.Equal(got, child) {
		t.Fatal("child read back differs")
	}
	// Each change costs at most a couple of chunks (64 KiB each at most).
	if limit := int64(changed+1) * 2 * maxChunk; cst.NewBytes > limit {
		t.Fatalf("child stored %d new bytes for %d changed pages (parent stored %d); want under %d", cst.NewBytes, changed+1, pst.NewBytes, limit)
	}
	if cst.Reused < cst.Chunks*8/10 {
		t.Fatalf("child reused %d of %d chunks", cst.Reused, cst.Chunks)
	}
	want := []string{"../p/state.pack", "state.pack"}
	if strings.Join(cm.Packs, ",") != strings.Join(want, ",") {
		t.Fatalf("child packs %q, want %q", cm.Packs, want)
	}

	// A grandchild identical to the child stores nothing new, and refers to
	// both packs it needs directly.
	gm, gst := save(t, filepath.Join(layers, "g", "state"), cm, child, 1<<20)
	if gst.Reused != gst.Chunks || gst.NewBytes > 64<<10 {
		t.Fatalf("unchanged grandchild: %+v", gst)
	}
	if want := []string{"../p/state.pack", "../c/state.pack"}; strings.Join(gm.Packs, ",") != strings.Join(want, ",") {
		t.Fatalf("grandchild packs %q, want %q", gm.Packs, want)
	}
	if got := load(t, filepath.Join(layers, "g", "state")); !bytes.Equal(got, child) {
		t.Fatal("grandchild read back differs")
	}
}

func TestDamageIsAnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	data := pages(3, 200)
	save(t, path, nil, data, 1<<20)

	// A flipped byte in the pack fails the read (zstd frame checksum).
	pack, _ := os.ReadFile(path + PackSuffix)
	pack[len(pack)/2] ^= 0xff
	os.WriteFile(path+PackSuffix, pack, 0o644)
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteTo(&bytes.Buffer{}); err == nil {
		t.Fatal("a damaged pack read back without error")
	}

	// A truncated or altered manifest does not load.
	man, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"truncated": man[:len(man)-10],
		"altered":   append(append([]byte{}, man[:len(man)/2]...), append([]byte{man[len(man)/2] ^ 1}, man[len(man)/2+1:]...)...),
		"foreign":   []byte("hello"),
	} {
		os.WriteFile(path, bad, 0o644)
		if _, err := Load(path); err == nil {
			t.Errorf("%s manifest loaded", name)
		}
	}

	// A missing ancestor pack is an error naming it.
	child := filepath.Join(dir, "c", "state")
	os.MkdirAll(filepath.Dir(child), 0o755)
	os.WriteFile(path, man, 0o644)
	pm, _ := Load(path)
	save(t, child, pm, data, 1<<20)
	os.Remove(path + PackSuffix)
	cm, err := Load(child)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cm.WriteTo(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "state.pack") {
		t.Fatalf("missing parent pack: %v", err)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(pages(4, 100))
	w.Abort()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("abort left %v", entries)
	}
	if _, _, err := w.Commit(); err == nil {
		t.Fatal("commit after abort succeeded")
	}
}

func TestCutsResynchronise(t *testing.T) {
	data := pages(5, 400)
	cuts := func(b []byte) map[string]bool {
		set := map[string]bool{}
		for len(b) > 0 {
			n, _ := cut(b)
			set[string(b[:n])] = true
			b = b[n:]
		}
		return set
	}
	a := cuts(data)
	b := cuts(append([]byte("a few bytes in front"), data...))
	same := 0
	for k := range b {
		if a[k] {
			same++
		}
	}
	if same < len(a)-3 {
		t.Fatalf("after a prefix, %d of %d chunks match", same, len(a))
	}
}

func BenchmarkSave(b *testing.B) {
	data := pages(6, 4096) // 16 MiB
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		w, err := Create(filepath.Join(b.TempDir(), "state"), nil)
		if err != nil {
			b.Fatal(err)
		}
		w.Write(data)
		if _, _, err := w.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoad(b *testing.B) {
	data := pages(7, 4096)
	path := filepath.Join(b.TempDir(), "state")
	w, _ := Create(path, nil)
	w.Write(data)
	w.Commit()
	m, err := Load(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := m.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCut(b *testing.B) {
	data := pages(8, 4096)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for p := data; len(p) > 0; {
			n, _ := cut(p)
			p = p[n:]
		}
	}
}
