package engine

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strata-ci/strata/internal/agentproto"
	"github.com/strata-ci/strata/internal/vm"
)

// fakeHypervisor stands in for QEMU in the engine's unit tests: its
// machines keep a tiny file system that is saved with snapshots, and
// understand `echo WORD >> FILE`, `exit N`, and nothing else.
type fakeHypervisor struct {
	mu       sync.Mutex
	boots    int
	restores int
	commands []string
	onBlock  func() // called when a step runs "block-until-cancelled"
}

func (h *fakeHypervisor) MachineArgs(img vm.Image, spec vm.Spec) string {
	return fmt.Sprintf("fake mem=%d cpus=%d", spec.MemoryMB, spec.CPUs)
}

func (h *fakeHypervisor) Boot(ctx context.Context, img vm.Image, overlay string, spec vm.Spec) (vm.Machine, error) {
	h.mu.Lock()
	h.boots++
	h.mu.Unlock()
	if err := os.WriteFile(overlay, nil, 0o644); err != nil {
		return nil, err
	}
	return &fakeMachine{h: h, overlay: overlay, fs: map[string]string{}}, nil
}

func (h *fakeHypervisor) Restore(ctx context.Context, img vm.Image, snap vm.SnapshotFiles, overlay string, spec vm.Spec) (vm.Machine, error) {
	h.mu.Lock()
	h.restores++
	h.mu.Unlock()
	data, err := os.ReadFile(snap.State)
	if err != nil {
		return nil, err
	}
	m := &fakeMachine{h: h, overlay: overlay}
	if err := json.Unmarshal(data, &m.fs); err != nil {
		return nil, err
	}
	return m, os.WriteFile(overlay, nil, 0o644)
}

type fakeMachine struct {
	h       *fakeHypervisor
	overlay string
	fs      map[string]string
}

var (
	echoAppend = regexp.MustCompile(`^echo (.*) >> (\S+)$`)
	exitCode   = regexp.MustCompile(`^exit (\d+)$`)
)

func (m *fakeMachine) Run(ctx context.Context, e vm.Exec, stdout, stderr io.Writer) (int, error) {
	cmd := e.Argv[len(e.Argv)-1]
	if i := strings.LastIndexByte(cmd, '\n'); i >= 0 {
		cmd = cmd[i+1:]
	}
	m.h.mu.Lock()
	m.h.commands = append(m.h.commands, cmd)
	m.h.mu.Unlock()
	if g := echoAppend.FindStringSubmatch(cmd); g != nil {
		word := os.Expand(g[1], func(k string) string {
			for _, kv := range e.Env {
				if strings.HasPrefix(kv, k+"=") {
					return kv[len(k)+1:]
				}
			}
			return ""
		})
		m.fs[g[2]] += word + "\n"
		fmt.Fprintln(stdout, word)
		return 0, nil
	}
	if cmd == "block-until-cancelled" {
		if m.h.onBlock != nil {
			m.h.onBlock()
		}
		<-ctx.Done()
		return -1, ctx.Err()
	}
	if g := exitCode.FindStringSubmatch(cmd); g != nil {
		n, _ := strconv.Atoi(g[1])
		return n, nil
	}
	if strings.HasPrefix(cmd, "id -") {
		fmt.Fprintln(stdout, "1000")
	}
	return 0, nil
}

func (m *fakeMachine) StartBackground(ctx context.Context, e vm.Exec, logPath string, grace time.Duration) error {
	return nil
}

func (m *fakeMachine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		if h.PAXRecords[agentproto.DeletePAXKey] == "1" {
			delete(m.fs, name)
			continue
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			m.fs[name] = string(b)
		}
	}
}

func (m *fakeMachine) Snapshot(ctx context.Context, statePath, nextOverlay string) (vm.SnapshotResult, error) {
	data, _ := json.Marshal(m.fs)
	if err := os.WriteFile(statePath, data, 0o644); err != nil {
		return vm.SnapshotResult{}, err
	}
	m.overlay = nextOverlay
	return vm.SnapshotResult{}, os.WriteFile(nextOverlay, nil, 0o644)
}

func (m *fakeMachine) StartSnapshot(ctx context.Context, statePath, nextOverlay string) (func(context.Context) (vm.SnapshotResult, error), error) {
	// Like QEMU's background save: the state is the one at this instant,
	// written later.
	data, _ := json.Marshal(m.fs)
	m.overlay = nextOverlay
	if err := os.WriteFile(nextOverlay, nil, 0o644); err != nil {
		return nil, err
	}
	return func(context.Context) (vm.SnapshotResult, error) {
		return vm.SnapshotResult{}, os.WriteFile(statePath, data, 0o644)
	}, nil
}

func (m *fakeMachine) Forward(ctx context.Context, guestPort int) (string, error) {
	return "", fmt.Errorf("not supported")
}
func (m *fakeMachine) Overlay() string { return m.overlay }
func (m *fakeMachine) Close() error    { return nil }
