// Package memstate stores a VM's saved state (QEMU's migration stream: RAM
// pages and device state) as content-defined chunks, deduplicated against
// the state it was taken after.
//
// A saved state is two files: a manifest (the path the caller names) that
// lists the stream's chunks in order, and a pack (manifest path + ".pack")
// holding the compressed chunks that were new in this state. Chunks the
// parent state already had are referenced in the parent's pack (or in
// whichever ancestor's pack the parent referenced), by a path relative to
// the manifest's folder. A state therefore needs its ancestors' packs: the
// store keeps a layer's parents as long as the layer (its disk needs them
// too), so only the bytes a step changed are added to the store.
//
// Each chunk is a zstd frame with a content checksum, so a pack damaged on
// disk (or a reference to a wrong offset, which is no frame) fails the
// restore instead of loading a corrupt guest; the manifest carries a
// SHA-256 of itself. Chunk hashes are not recomputed on restore: that
// would cost restore time for what the frame checksums already catch.
package memstate

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-ci/strata/internal/fsutil"
)

const magic = "STRATAMS1\n"

// PackSuffix names a state's pack: the manifest path plus this suffix.
const PackSuffix = ".pack"

// Entry is one chunk of a stream.
type Entry struct {
	Hash [sha256.Size]byte // of the uncompressed bytes
	Pack uint32            // index into Manifest.Packs
	Off  int64             // where its zstd frame starts in the pack
	CLen uint32            // compressed length
	RLen uint32            // uncompressed length
}

// Manifest lists the chunks of one saved stream.
type Manifest struct {
	// Dir is the folder the manifest lives in; Packs are relative to it.
	Dir    string
	Packs  []string
	Size   int64 // uncompressed stream bytes
	Chunks []Entry
}

// Load reads a manifest.
func Load(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("state manifest: %w", err)
	}
	m, err := decode(b)
	if err != nil {
		return nil, fmt.Errorf("state manifest %s: %w", path, err)
	}
	m.Dir = filepath.Dir(path)
	return m, nil
}

var errCorrupt = errors.New("corrupt (bad checksum or truncated)")

func decode(b []byte) (*Manifest, error) {
	if len(b) < len(magic)+sha256.Size || string(b[:len(magic)]) != magic {
		return nil, errors.New("not a strata state manifest")
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if h := sha256.Sum256(body); !bytes.Equal(h[:], sum) {
		return nil, errCorrupt
	}
	r := bytes.NewReader(body[len(magic):])
	var m Manifest
	var npacks uint32
	if err := binary.Read(r, binary.LittleEndian, &npacks); err != nil {
		return nil, errCorrupt
	}
	for range npacks {
		var n uint16
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return nil, errCorrupt
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, errCorrupt
		}
		m.Packs = append(m.Packs, string(p))
	}
	var nchunks uint32
	if err := binary.Read(r, binary.LittleEndian, &m.Size); err != nil {
		return nil, errCorrupt
	}
	if err := binary.Read(r, binary.LittleEndian, &nchunks); err != nil {
		return nil, errCorrupt
	}
	if int64(nchunks)*entrySize != int64(r.Len()) {
		return nil, errCorrupt
	}
	m.Chunks = make([]Entry, nchunks)
	if err := binary.Read(r, binary.LittleEndian, m.Chunks); err != nil {
		return nil, errCorrupt
	}
	var total int64
	for _, c := range m.Chunks {
		if int(c.Pack) >= len(m.Packs) {
			return nil, errCorrupt
		}
		total += int64(c.RLen)
	}
	if total != m.Size {
		return nil, errCorrupt
	}
	return &m, nil
}

const entrySize = sha256.Size + 4 + 8 + 4 + 4

func (m *Manifest) encode() []byte {
	var b bytes.Buffer
	b.WriteString(magic)
	le := binary.LittleEndian
	_ = binary.Write(&b, le, uint32(len(m.Packs)))
	for _, p := range m.Packs {
		_ = binary.Write(&b, le, uint16(len(p)))
		b.WriteString(p)
	}
	_ = binary.Write(&b, le, m.Size)
	_ = binary.Write(&b, le, uint32(len(m.Chunks)))
	_ = binary.Write(&b, le, m.Chunks)
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

// decoders are shared: DecodeAll is safe for concurrent use.
var decoder = sync.OnceValue(func() *zstd.Decoder {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxChunk*2))
	return d
})

// WriteTo streams the uncompressed state to w. Batches of about 4 MiB are
// read (neighbouring chunks of a pack in one read), decompressed in
// parallel into one buffer and written at once, the next batch being
// prepared while one is written.
func (m *Manifest) WriteTo(w io.Writer) (int64, error) {
	packs := make([]*os.File, len(m.Packs))
	for i, p := range m.Packs {
		f, err := os.Open(filepath.Join(m.Dir, p))
		if err != nil {
			for _, f := range packs[:i] {
				f.Close()
			}
			return 0, fmt.Errorf("state pack: %w", err)
		}
		packs[i] = f
	}
	type batch struct {
		data []byte
		err  error
	}
	batches := make(chan batch, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(batches)
		for first := 0; first < len(m.Chunks); {
			last, size := first, 0
			for last < len(m.Chunks) && (last == first || size+int(m.Chunks[last].RLen) <= bufSize) {
				size += int(m.Chunks[last].RLen)
				last++
			}
			data, err := m.readBatch(packs, m.Chunks[first:last], size)
			select {
			case batches <- batch{data, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
			first = last
		}
	})
	defer func() {
		close(stop)
		wg.Wait() // no read on a closed pack
		for _, f := range packs {
			f.Close()
		}
	}()
	var n int64
	for b := range batches {
		if b.err != nil {
			return n, b.err
		}
		k, err := w.Write(b.data)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readBatch reads and decompresses chunks (size bytes uncompressed).
func (m *Manifest) readBatch(packs []*os.File, chunks []Entry, size int) ([]byte, error) {
	// Runs of chunks that sit back to back in one pack are read at once.
	type run struct {
		pack       uint32
		first, end int // chunk indexes
	}
	var runs []run
	for i, c := range chunks {
		// At most 32 chunks a run, so that workers share a batch.
		if k := len(runs) - 1; k >= 0 && runs[k].pack == c.Pack && runs[k].end-runs[k].first < 32 {
			prev := chunks[i-1]
			if prev.Off+int64(prev.CLen) == c.Off {
				runs[k].end = i + 1
				continue
			}
		}
		runs = append(runs, run{pack: c.Pack, first: i, end: i + 1})
	}
	out := make([]byte, size)
	at := make([]int, len(chunks)+1)
	for i, c := range chunks {
		at[i+1] = at[i] + int(c.RLen)
	}
	errs := make([]error, len(runs))
	parallel(len(runs), func(r int) {
		errs[r] = m.readRun(packs, chunks, runs[r].first, runs[r].end, out, at)
	})
	return out, errors.Join(errs...)
}

// readRun reads chunks[first:end], adjacent in one pack, and decompresses
// each into out at its offset.
func (m *Manifest) readRun(packs []*os.File, chunks []Entry, first, end int, out []byte, at []int) error {
	c0, cl := chunks[first], chunks[end-1]
	buf := make([]byte, cl.Off+int64(cl.CLen)-c0.Off)
	if _, err := packs[c0.Pack].ReadAt(buf, c0.Off); err != nil {
		return fmt.Errorf("state pack %s at %d: %w", m.Packs[c0.Pack], c0.Off, err)
	}
	for i := first; i < end; i++ {
		c := chunks[i]
		src := buf[c.Off-c0.Off : c.Off-c0.Off+int64(c.CLen)]
		dst := out[at[i]:at[i]:at[i+1]]
		got, err := decoder().DecodeAll(src, dst)
		if err == nil && (len(got) != int(c.RLen) || (len(got) > 0 && &got[0] != &out[at[i]])) {
			err = fmt.Errorf("chunk is %d bytes, want %d", len(got), c.RLen)
		}
		if err != nil {
			return fmt.Errorf("state pack %s at %d: %w", m.Packs[c.Pack], c.Off, err)
		}
	}
	return nil
}

// Stats says what saving a stream cost.
type Stats struct {
	Size     int64 // uncompressed stream bytes
	Chunks   int
	Reused   int   // chunks found in the parent (or earlier in the stream)
	NewBytes int64 // bytes written to the pack
}

// Writer saves a stream. Write it, then Commit; Abort (or a crash) leaves
// nothing that a committed manifest refers to.
type Writer struct {
	path   string
	pack   *os.File
	packW  *bufio.Writer
	packAt int64
	enc    *zstd.Encoder
	parent map[[sha256.Size]byte]Entry // read-only once created
	own    map[[sha256.Size]byte]Entry // chunks stored in this pack
	m      Manifest
	buf    []byte
	stats  Stats
	err    error
	done   bool
}

// Create starts saving a stream whose manifest will be path. parent, when
// not nil, is the state this one was taken after: chunks it holds are
// referenced, not stored again.
func Create(path string, parent *Manifest) (*Writer, error) {
	dir := filepath.Dir(path)
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	w := &Writer{path: path, parent: map[[sha256.Size]byte]Entry{}, own: map[[sha256.Size]byte]Entry{}}
	w.m.Dir = dir
	if parent != nil {
		absParent, err := filepath.Abs(parent.Dir)
		if err != nil {
			return nil, err
		}
		remap := make([]uint32, len(parent.Packs))
		for i, p := range parent.Packs {
			rel, err := filepath.Rel(absDir, filepath.Join(absParent, p))
			if err != nil {
				return nil, fmt.Errorf("state pack %s: %w", p, err)
			}
			remap[i] = uint32(len(w.m.Packs))
			w.m.Packs = append(w.m.Packs, rel)
		}
		for _, c := range parent.Chunks {
			c.Pack = remap[c.Pack]
			w.parent[c.Hash] = c
		}
	}
	w.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	// The pack is written under its final name: until the manifest is
	// committed nothing refers to it.
	// Never an existing pack: a committed state may refer to it.
	w.pack, err = os.OpenFile(path+PackSuffix, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("state pack: %w", err)
	}
	w.packW = bufio.NewWriterSize(w.pack, 1<<20)
	w.m.Packs = append(w.m.Packs, filepath.Base(path)+PackSuffix)
	w.buf = make([]byte, 0, bufSize)
	return w, nil
}

// Write adds stream bytes.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(false); err != nil {
				w.err = err
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// bufSize is how much stream a Writer cuts and stores at once: a few
// hundred chunks, hashed and compressed in parallel.
const bufSize = 4 << 20

// flush cuts the buffer into chunks and stores every complete one (all of
// it when final).
func (w *Writer) flush(final bool) error {
	var chunks [][]byte
	start := 0
	for start < len(w.buf) {
		rest := w.buf[start:]
		k, found := cut(rest)
		if !found && !final {
			break
		}
		chunks = append(chunks, rest[:k])
		start += k
	}
	if err := w.add(chunks); err != nil {
		return err
	}
	w.buf = append(w.buf[:0], w.buf[start:]...)
	return nil
}

// add stores chunks in order: hashed, looked up in the parent and
// compressed by parallel workers, then appended to the manifest and pack.
func (w *Writer) add(chunks [][]byte) error {
	type work struct {
		hash   [sha256.Size]byte
		known  bool
		packed []byte
	}
	todo := make([]work, len(chunks))
	parallel(len(chunks), func(i int) {
		t := &todo[i]
		t.hash = sha256.Sum256(chunks[i])
		if e, ok := w.parent[t.hash]; ok && int(e.RLen) == len(chunks[i]) {
			t.known = true
			return
		}
		t.packed = w.enc.EncodeAll(chunks[i], nil)
	})
	for i, chunk := range chunks {
		t := &todo[i]
		w.stats.Chunks++
		w.m.Size += int64(len(chunk))
		if t.known {
			w.stats.Reused++
			w.m.Chunks = append(w.m.Chunks, w.parent[t.hash])
			continue
		}
		if e, ok := w.own[t.hash]; ok && int(e.RLen) == len(chunk) {
			w.stats.Reused++ // seen earlier in this stream
			w.m.Chunks = append(w.m.Chunks, e)
			continue
		}
		if _, err := w.packW.Write(t.packed); err != nil {
			return fmt.Errorf("state pack: %w", err)
		}
		e := Entry{Hash: t.hash, Pack: uint32(len(w.m.Packs) - 1), Off: w.packAt, CLen: uint32(len(t.packed)), RLen: uint32(len(chunk))}
		w.packAt += int64(len(t.packed))
		w.own[t.hash] = e
		w.m.Chunks = append(w.m.Chunks, e)
	}
	return nil
}

// Commit stores the last chunk, syncs the pack and writes the manifest
// atomically. It returns the saved manifest (a parent for the next state).
func (w *Writer) Commit() (*Manifest, Stats, error) {
	if w.done {
		return nil, w.stats, errors.New("state already committed or aborted")
	}
	if w.err == nil {
		w.err = w.flush(true)
	}
	if w.err == nil {
		w.err = w.packW.Flush()
	}
	if w.err == nil {
		w.err = w.pack.Sync()
	}
	if err := w.pack.Close(); w.err == nil {
		w.err = err
	}
	w.done = true
	if w.err != nil {
		os.Remove(w.path + PackSuffix)
		return nil, w.stats, fmt.Errorf("save state: %w", w.err)
	}
	// Drop packs no chunk uses (ancestors whose chunks all changed).
	used := make([]bool, len(w.m.Packs))
	for _, c := range w.m.Chunks {
		used[c.Pack] = true
	}
	remap := make([]uint32, len(w.m.Packs))
	var packs []string
	for i, p := range w.m.Packs {
		if used[i] {
			remap[i] = uint32(len(packs))
			packs = append(packs, p)
		}
	}
	for i := range w.m.Chunks {
		w.m.Chunks[i].Pack = remap[w.m.Chunks[i].Pack]
	}
	w.m.Packs = packs
	data := w.m.encode()
	if err := fsutil.WriteFileAtomic(w.path, data, 0o644); err != nil {
		// The rename may have happened before the error (a failed
		// directory sync): no manifest may outlive its pack.
		os.Remove(w.path)
		os.Remove(w.path + PackSuffix)
		return nil, w.stats, fmt.Errorf("save state: %w", err)
	}
	if w.packAt == 0 {
		// Nothing new: the empty pack is not needed (and not listed).
		os.Remove(w.path + PackSuffix)
	}
	w.stats.Size = w.m.Size
	w.stats.NewBytes = w.packAt + int64(len(data))
	m := w.m
	return &m, w.stats, nil
}

// Abort throws the unfinished state away.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.pack.Close()
	os.Remove(w.path + PackSuffix)
}

// parallel calls fn(0) ... fn(n-1) on up to GOMAXPROCS goroutines and
// returns when all have returned.
func parallel(n int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		})
	}
	wg.Wait()
}
