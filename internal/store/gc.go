package store

import (
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// GCResult reports what GC did.
type GCResult struct {
	Unfinished int   // half-written layers removed
	Removed    int   // committed layers removed
	Freed      int64 // bytes freed
	Size       int64 // bytes the store's layers use afterwards
	// Unreadable counts committed layers whose metadata could not be
	// read. Their parents are unknown, so while there are any GC removes
	// no committed layer (a parent might look like a leaf).
	Unreadable int
}

// TryLockExclusive takes the store lock exclusively if no run holds it.
func (s *Store) TryLockExclusive() (func(), error) { return s.flock(unix.LOCK_EX | unix.LOCK_NB) }

// GC must be called with the exclusive lock held (no run in progress). It
// removes layers without metadata (left by crashes or cancelled runs),
// then removes least recently used leaf layers until the committed layers
// use at most maxBytes. RUN REPEATABLE states go last.
func (s *Store) GC(maxBytes int64) (GCResult, error) {
	var res GCResult
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return res, err
	}
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(s.root, "layers", e.Name(), metaFile)); err == nil {
			if _, err := s.Get(e.Name()); err != nil {
				res.Unreadable++
			}
		} else if os.IsNotExist(err) {
			res.Freed += dirSize(filepath.Join(s.root, "layers", e.Name()))
			if err := os.RemoveAll(filepath.Join(s.root, "layers", e.Name())); err != nil {
				return res, err
			}
			res.Unfinished++
		}
	}
	layers := map[string]Layer{}
	children := map[string]int{}
	var size int64
	_ = s.Walk(func(l Layer) error {
		layers[l.ID] = l
		children[l.Parent]++
		size += l.DiskBytes + l.StateBytes
		return nil
	})
	refs := s.RepeatableRefs()
	for size > maxBytes && res.Unreadable == 0 {
		var leaves []Layer
		for id, l := range layers {
			if children[id] == 0 {
				leaves = append(leaves, l)
			}
		}
		if len(leaves) == 0 {
			break
		}
		sort.Slice(leaves, func(i, j int) bool {
			if refs[leaves[i].ID] != refs[leaves[j].ID] {
				return !refs[leaves[i].ID]
			}
			return s.lastUsed(leaves[i]).Before(s.lastUsed(leaves[j]))
		})
		victim := leaves[0]
		if err := s.Remove(victim.ID); err != nil {
			return res, err
		}
		delete(layers, victim.ID)
		children[victim.Parent]--
		size -= victim.DiskBytes + victim.StateBytes
		res.Freed += victim.DiskBytes + victim.StateBytes
		res.Removed++
	}
	res.Size = size
	return res, nil
}

func (s *Store) lastUsed(l Layer) time.Time {
	if t := s.LastUsed(l.ID); !t.IsZero() {
		return t
	}
	return l.Created
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += allocated(fi)
		}
		return nil
	})
	return n
}
