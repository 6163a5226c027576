// Package vm runs guests and saves and restores their whole state.
//
// The engine talks only to the Hypervisor and Machine interfaces below; QEMU
// (qemu.go) is the first implementation. A snapshot is two files: a frozen
// qcow2 disk layer whose backing file is its parent layer, and a compressed
// memory/device state file. The store decides where these files live; this
// package only writes the paths it is given.
package vm

import (
	"context"
	"io"
	"time"
)

// Spec is the shape of a VM. Two VMs with equal Specs (and equal images)
// have identical device arguments, which is what makes a snapshot of one
// restorable in the other.
type Spec struct {
	MemoryMB int // guest RAM, default 2048
	CPUs     int // vCPUs, default 2
}

// Image is a bootable base image.
type Image struct {
	Disk    string // qcow2 (or raw) root disk, read-only: always used as a backing file
	Kernel  string // vmlinuz
	Initrd  string // initramfs
	Cmdline string // kernel command line
}

// SnapshotFiles names an existing snapshot to restore.
type SnapshotFiles struct {
	Disk  string // frozen qcow2 layer (immutable)
	State string // memory and device state written by Machine.Snapshot
	// MachineArgs is the fingerprint recorded at snapshot time; Restore
	// refuses (ErrIncompatible) when the current fingerprint differs.
	MachineArgs string
}

// Exec describes a command run by the guest agent.
type Exec struct {
	Argv []string // argv[0] is looked up in PATH
	Env  []string // KEY=VALUE, the complete environment
	User string   // "" means root
	Dir  string   // "" means the user's home
	// Stdin, when non-nil, is copied to the process's standard input.
	Stdin io.Reader
	// TTY asks for a pseudo-terminal (interactive shells).
	TTY bool
}

// SnapshotResult reports what a snapshot cost.
type SnapshotResult struct {
	Pause time.Duration // wall time the guest was stopped
	Total time.Duration // until the state was complete and synced
	// StateBytes is what the state added on disk: its manifest and the
	// chunks its parent state did not have.
	StateBytes int64
	// StateStreamBytes is the whole uncompressed state stream (RAM pages
	// that are not zero, and device state).
	StateStreamBytes int64
	DiskBytes        int64 // size of the frozen layer on disk
}

// Hypervisor starts machines.
type Hypervisor interface {
	// Boot starts img with a new writable overlay created at overlay
	// (backing file: img.Disk) and returns once the guest agent answers.
	Boot(ctx context.Context, img Image, overlay string, spec Spec) (Machine, error)
	// Restore starts a new VM from snap: a new writable overlay created at
	// overlay on top of snap.Disk, memory and devices loaded from
	// snap.State. It returns once the guest agent answers and the guest
	// clock and random pool have been refreshed.
	Restore(ctx context.Context, img Image, snap SnapshotFiles, overlay string, spec Spec) (Machine, error)
	// MachineArgs is the fingerprint of the device arguments for img and spec
	// (QEMU version, accelerator, machine type, devices...).
	MachineArgs(img Image, spec Spec) string
}

// Machine is one running VM.
type Machine interface {
	// Run executes a command and streams its output; it returns the exit
	// code. Cancelling ctx kills the command in the guest.
	Run(ctx context.Context, e Exec, stdout, stderr io.Writer) (int, error)
	// StartBackground starts a detached command that keeps running in
	// later steps and in snapshots. Its output is kept in the guest at
	// logPath. It fails if the process exits non-zero within grace.
	StartBackground(ctx context.Context, e Exec, logPath string, grace time.Duration) error
	// CopyIn extracts a tar stream into the guest below dir (absolute),
	// preserving modes, owners and mtimes recorded in the stream.
	CopyIn(ctx context.Context, dir string, tar io.Reader) error
	// Snapshot freezes the current disk overlay (it becomes an immutable
	// layer, left at its path) and writes memory and device state to
	// statePath (a manifest, with statePath+".pack" beside it: see package
	// memstate); the VM continues on a new overlay created at nextOverlay.
	// The state refers to chunks of the state this machine was restored
	// from or last saved, which must stay where they are while it is kept
	// (as the frozen disk needs its backing files).
	Snapshot(ctx context.Context, statePath, nextOverlay string) (SnapshotResult, error)
	// StartSnapshot is Snapshot that returns as soon as the guest runs
	// again (the disk already switched to nextOverlay), while memory keeps
	// being saved in the background. finish waits until statePath is
	// complete and synced; it must be called exactly once, before the next
	// snapshot and before Close. The guest may run commands meanwhile.
	StartSnapshot(ctx context.Context, statePath, nextOverlay string) (finish func(context.Context) (SnapshotResult, error), err error)
	// Forward forwards a loopback port on the host to guestPort and
	// returns the host address ("127.0.0.1:NNNNN").
	Forward(ctx context.Context, guestPort int) (string, error)
	// Overlay is the path of the current writable overlay.
	Overlay() string
	// Close stops the VM and releases everything it holds. It is safe to
	// call more than once.
	Close() error
}
