// Package store keeps whole-VM snapshots as layers on disk, in the manner of
// containerd's snapshotter: Prepare makes an active (writable) layer on top
// of a parent, Commit freezes it under its ID with its metadata, Abort throws
// it away, Get and Walk read committed layers.
//
// Layout under the store root:
//
//	layers/<id>/disk.qcow2   disk delta since the parent (backing file: parent's disk)
//	layers/<id>/state        memory and device state: a manifest of chunks
//	layers/<id>/state.pack   the chunks that were new in this layer (the
//	                         rest are in ancestors' packs; package memstate)
//	layers/<id>/meta.json    metadata; written last and atomically: a layer
//	                         without it is not committed and is garbage
//	keys/<key>.json          cache index: step key -> layer IDs, newest first
//	repeatable/<scope>/<branch>/<key>.json  RUN REPEATABLE state pointers
//	runs/<scope>.json        the last run's report per repository (explain)
//	lock                     flock: shared by runs, exclusive for gc
//
// Every write is atomic (temp file, fsync, rename), so a crash at any point
// leaves a store that opens, and two runs at once never see half a layer.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/fsutil"
)

// ErrNotFound is returned for a missing or uncommitted layer.
var ErrNotFound = errors.New("not found")

// Store is a snapshot store rooted at a directory.
type Store struct {
	root string
}

// Layer is the metadata of a committed snapshot.
type Layer struct {
	ID     string `json:"id"`
	Parent string `json:"parent,omitempty"` // "" when the disk's backing file is the base image
	// Image is the base image ID at the root of this layer's chain.
	Image string `json:"image"`
	// Depth counts layers from the base image (1 for a layer on the image).
	Depth int `json:"depth"`
	// Key is the cache key of the step that produced this snapshot.
	Key string `json:"key"`
	// MachineArgs fingerprints the hypervisor and device arguments; a
	// restore with other arguments is a miss.
	MachineArgs string `json:"machine_args"`
	// MemoryMB and CPUs are the VM shape a restore must use.
	MemoryMB     int    `json:"memory_mb"`
	CPUs         int    `json:"cpus"`
	AgentVersion string `json:"agent_version,omitempty"`
	// Where it came from, for ls and explain: the repository folder the
	// run was given and the Layerfile's path below it.
	Repository  string `json:"repository,omitempty"`
	Layerfile   string `json:"layerfile,omitempty"`
	Step        int    `json:"step"`
	Instruction string `json:"instruction,omitempty"`
	// Checkpoint is the name given by a named CHECKPOINT.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Reads maps repository paths (slash-separated, relative to the repo
	// root) to the content digest each had when the steps up to this one
	// read it. The layer is reusable only while all of them still match.
	Reads map[string]string `json:"reads,omitempty"`
	// Files maps guest paths to the digest of the repository file copied
	// there (for putting today's files in place after a restore).
	Files map[string]FileEntry `json:"files,omitempty"`
	// CacheGen records, per CACHE directory, the generation of saved
	// cache content the guest holds.
	CacheGen map[string]int64 `json:"cache_gen,omitempty"`

	DiskBytes  int64         `json:"disk_bytes"`
	StateBytes int64         `json:"state_bytes"`
	Pause      time.Duration `json:"pause_ns"`
	Created    time.Time     `json:"created"`
}

// FileEntry describes one repository file placed in the guest.
type FileEntry struct {
	Source string `json:"src"`    // repository path
	Digest string `json:"digest"` // content digest
	Mode   uint32 `json:"mode"`
}

// Active is a writable layer being filled by a running VM.
type Active struct {
	ID     string
	Parent string // committed parent layer, "" for the base image
	Dir    string
}

// Overlay is where the running VM's writable disk lives.
func (a *Active) Overlay() string { return filepath.Join(a.Dir, diskFile) }

// StatePath is where the memory state goes when this layer is committed.
func (a *Active) StatePath() string { return filepath.Join(a.Dir, stateFile) }

const (
	diskFile  = "disk.qcow2"
	stateFile = "state"
	packFile  = "state.pack" // absent when the state added no new chunk
	metaFile  = "meta.json"
)

// Open opens (creating if needed) the store at root.
func Open(root string) (*Store, error) {
	for _, d := range []string{"layers", "keys", "repeatable", "runs", "cache"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: %w", root, err)
		}
	}
	return &Store{root: root}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) layerDir(id string) string { return filepath.Join(s.root, "layers", id) }

// DiskPath is the frozen disk layer of a committed layer.
func (s *Store) DiskPath(id string) string { return filepath.Join(s.layerDir(id), diskFile) }

// StatePath is the memory state file of a committed layer.
func (s *Store) StatePath(id string) string { return filepath.Join(s.layerDir(id), stateFile) }

func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// Prepare creates an active layer on top of parent ("" for the base
// image). The parent is committed, or active and about to be committed.
func (s *Store) Prepare(parent string) (*Active, error) {
	if parent != "" {
		// The parent may still be active: a running VM's overlay becomes
		// the parent of the next one at the moment it is frozen.
		if _, err := os.Stat(s.layerDir(parent)); err != nil {
			return nil, fmt.Errorf("prepare on %s: %w", parent, ErrNotFound)
		}
	}
	id := newID()
	dir := s.layerDir(id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("prepare layer: %w", err)
	}
	return &Active{ID: id, Parent: parent, Dir: dir}, nil
}

// Commit freezes an active layer whose disk and state files are complete,
// recording m (its ID and Parent are taken from a). Until meta.json is
// renamed into place the layer does not exist for readers.
func (s *Store) Commit(a *Active, m Layer) (Layer, error) {
	m.ID, m.Parent = a.ID, a.Parent
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	for _, name := range []string{diskFile, stateFile, packFile} {
		p := filepath.Join(a.Dir, name)
		fi, err := os.Stat(p)
		if name == packFile && os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return Layer{}, fmt.Errorf("commit %s: %w", a.ID, err)
		}
		if err := fsutil.SyncFile(p); err != nil {
			return Layer{}, fmt.Errorf("commit %s: %w", a.ID, err)
		}
		if name == diskFile {
			m.DiskBytes = allocated(fi)
		} else {
			m.StateBytes += allocated(fi)
		}
	}
	if err := fsutil.WriteJSONAtomic(filepath.Join(a.Dir, metaFile), m); err != nil {
		return Layer{}, fmt.Errorf("commit %s: %w", a.ID, err)
	}
	return m, nil
}

// Abort removes an active layer that will not be committed.
func (s *Store) Abort(a *Active) error {
	if err := os.RemoveAll(a.Dir); err != nil {
		return fmt.Errorf("abort %s: %w", a.ID, err)
	}
	return nil
}

// Get reads a committed layer.
func (s *Store) Get(id string) (Layer, error) {
	var m Layer
	if err := fsutil.ReadJSON(filepath.Join(s.layerDir(id), metaFile), &m); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Layer{}, fmt.Errorf("layer %s: %w", id, ErrNotFound)
		}
		return Layer{}, fmt.Errorf("layer %s: %w", id, err)
	}
	return m, nil
}

// Walk calls fn for every committed layer, oldest first.
func (s *Store) Walk(fn func(Layer) error) error {
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return fmt.Errorf("walk layers: %w", err)
	}
	var layers []Layer
	for _, e := range entries {
		m, err := s.Get(e.Name())
		if err != nil {
			continue // uncommitted or being removed
		}
		layers = append(layers, m)
	}
	sort.Slice(layers, func(i, j int) bool { return layers[i].Created.Before(layers[j].Created) })
	for _, m := range layers {
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes a committed layer. The caller makes sure no other layer
// is built on it. meta.json goes first, so a crash midway leaves garbage,
// never a committed layer with missing files.
func (s *Store) Remove(id string) error {
	dir := s.layerDir(id)
	if err := os.Remove(filepath.Join(dir, metaFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

// allocated is the bytes a file really occupies (sparse files count less).
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*unix.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Touch records that a layer was used now (for least-recently-used gc).
func (s *Store) Touch(id string) {
	now := time.Now()
	_ = os.Chtimes(filepath.Join(s.layerDir(id), metaFile), now, now)
}

// LastUsed is when a layer was last committed or used.
func (s *Store) LastUsed(id string) time.Time {
	fi, err := os.Stat(filepath.Join(s.layerDir(id), metaFile))
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}
