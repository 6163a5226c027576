package vm

import "errors"

// ErrNoQEMU means qemu-system-x86_64 (or qemu-img) is not installed. On
// Debian it comes with the package qemu-system-x86 (qemu-img with
// qemu-utils). The CLI maps it to exit code 3.
var ErrNoQEMU = errors.New("QEMU not found: install the Debian package qemu-system-x86 (and qemu-utils)")

// ErrIncompatible means a snapshot was taken with other machine arguments
// (QEMU version, accelerator, devices, memory...) than the ones Restore
// would use now: it cannot be loaded and must be treated as a cache miss.
var ErrIncompatible = errors.New("snapshot is incompatible with this machine")

// ErrVMDied means the QEMU process exited or the guest stopped answering.
var ErrVMDied = errors.New("virtual machine died")
