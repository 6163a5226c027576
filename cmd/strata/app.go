package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/fsutil"
	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/vm"
)

// app is what the VM-using commands share: configuration, the store and
// the hypervisor.
type app struct {
	images image.Config
	store  *store.Store
	hv     *vm.QEMU
	salt   []byte
}

// openApp opens the store and finds QEMU. Errors carry exit code 3.
func openApp(warn io.Writer) (*app, error) {
	cfg, err := image.LoadConfig()
	if err != nil {
		return nil, withExit(2, err)
	}
	st, err := store.Open(filepath.Join(cfg.Home, "store"))
	if err != nil {
		return nil, withExit(3, err)
	}
	hv, err := vm.NewQEMU(vm.QEMUOptions{
		CacheDir: filepath.Join(cfg.Home, "cache"),
		Warn:     warn,
	})
	if err != nil {
		if errors.Is(err, vm.ErrNoQEMU) {
			return nil, withExit(3, fmt.Errorf("%w\ninstall it with: apt-get install qemu-system-x86 qemu-utils (or run ./scripts/setup.sh)", err))
		}
		return nil, withExit(3, err)
	}
	salt, err := loadSalt(st.Root())
	if err != nil {
		return nil, withExit(3, err)
	}
	return &app{images: cfg, store: st, hv: hv, salt: salt}, nil
}

// resolveImage builds (once) and returns a base image.
func (a *app) resolveImage(ctx context.Context, name string, progress io.Writer) (engine.ImageRef, error) {
	b, err := image.Ensure(ctx, a.images, name, nil, progress)
	if err != nil {
		return engine.ImageRef{}, err
	}
	return engine.ImageRef{ID: b.ID, Image: b.Image}, nil
}

// loadSalt returns the store's secret-digest salt, creating it once.
func loadSalt(root string) ([]byte, error) {
	p := filepath.Join(root, "salt")
	if b, err := os.ReadFile(p); err == nil && len(b) >= 32 {
		return b, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(p, b, 0o600); err != nil {
		return nil, err
	}
	// Two runs may race to create it: whoever renamed last wins, so read back.
	return os.ReadFile(p)
}
