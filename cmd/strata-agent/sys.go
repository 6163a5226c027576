package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/agentproto"
	"github.com/strata-ci/strata/internal/version"
)

// agentInfo describes this agent and its VM for the hello-ack.
func agentInfo() agentproto.Info {
	info := agentproto.Info{AgentVersion: version.Version, Protocol: agentproto.ProtocolVersion}
	info.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		info.BootID = strings.TrimSpace(string(b))
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err == nil {
		info.Uptime = time.Duration(ts.Nano())
	}
	return info
}

// setClock sets the wall clock to the given Unix time in nanoseconds.
func setClock(unixNano int64) error {
	tv := unix.NsecToTimeval(unixNano)
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// addEntropy credits seed to the kernel's pool (RNDADDENTROPY), writes it to
// /dev/urandom as well, and asks for a CRNG reseed (RNDRESEEDCRNG, Linux
// 4.17+; ignored where missing).
func addEntropy(seed []byte) error {
	if len(seed) == 0 {
		return errors.New("empty seed")
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+(len(seed)+3)/4*4)
	binary.NativeEndian.PutUint32(buf[0:4], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(buf[4:8], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("write /dev/urandom: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 &&
		errno != unix.ENOTTY && errno != unix.EINVAL {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}
