package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/strata-ci/strata/internal/vm/initramfs"
)

// probeTimeout bounds the KVM probe VM: a working KVM boots the probe
// kernel to its init in well under a second.
const probeTimeout = 8 * time.Second

const probeMarker = "STRATA-KVM-PROBE-OK"

// DetectAccel decides between KVM and TCG. KVM is used only if a probe VM
// (a real kernel with a tiny initramfs whose init prints a marker and powers
// off) reaches its init within a few seconds; the verdict is cached in
// cacheDir, keyed by QEMU, host kernel and probe kernel. The probe kernel is
// $STRATA_PROBE_KERNEL, else the newest /boot/vmlinuz-*, else a vmlinuz*
// below $STRATA_IMAGES. The string says why.
func DetectAccel(ctx context.Context, cacheDir string) (Accel, string) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return AccelTCG, "qemu-system-x86_64 not found"
	}
	a, reason, err := detectAccel(ctx, bin, cacheDir, findProbeKernel())
	if err != nil {
		return AccelTCG, err.Error()
	}
	return a, reason
}

func findProbeKernel() string {
	if k := os.Getenv("STRATA_PROBE_KERNEL"); k != "" {
		return k
	}
	var cands []string
	b, _ := filepath.Glob("/boot/vmlinuz-*")
	cands = append(cands, b...)
	if d := os.Getenv("STRATA_IMAGES"); d != "" {
		for _, pat := range []string{"*/vmlinuz*", "*/*/vmlinuz*"} {
			m, _ := filepath.Glob(filepath.Join(d, pat))
			cands = append(cands, m...)
		}
	}
	var best string
	var bestT time.Time
	for _, c := range cands {
		fi, err := os.Stat(c)
		if err == nil && fi.Mode().IsRegular() && fi.ModTime().After(bestT) {
			best, bestT = c, fi.ModTime()
		}
	}
	return best
}

type accelVerdict struct {
	Accel  Accel  `json:"accel"`
	Reason string `json:"reason"`
}

// detectAccel returns a verdict; an error means "use TCG now, but do not
// cache" (e.g. no probe kernel yet).
func detectAccel(ctx context.Context, qemuBin, cacheDir, kernel string) (Accel, string, error) {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		return AccelTCG, fmt.Sprintf("/dev/kvm is not usable: %v", err), nil
	} else {
		f.Close()
	}
	if kernel == "" {
		return AccelTCG, "", errors.New("/dev/kvm exists but no kernel is available to probe it")
	}
	kfi, err := os.Stat(kernel)
	if err != nil {
		return AccelTCG, "", fmt.Errorf("probe kernel: %w", err)
	}
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	qfi, _ := os.Stat(qemuBin)
	var qsize int64
	if qfi != nil {
		qsize = qfi.Size()
	}
	key := sha256.Sum256([]byte(fmt.Sprintf("%s|%d|%s|%s|%d|%d", qemuBin, qsize, utsString(uts.Release[:]),
		kernel, kfi.Size(), kfi.ModTime().UnixNano())))
	cacheFile := filepath.Join(cacheDir, "accel-"+hex.EncodeToString(key[:8])+".json")
	if b, err := os.ReadFile(cacheFile); err == nil {
		var v accelVerdict
		if json.Unmarshal(b, &v) == nil && (v.Accel == AccelKVM || v.Accel == AccelTCG) {
			return v.Accel, v.Reason + " (cached)", nil
		}
	}
	v := probeKVM(ctx, qemuBin, kernel)
	if ctx.Err() != nil {
		return AccelTCG, "", fmt.Errorf("KVM probe interrupted: %w", ctx.Err())
	}
	if err := os.MkdirAll(cacheDir, 0o755); err == nil {
		if b, err := json.Marshal(v); err == nil {
			tmp := cacheFile + ".tmp"
			if os.WriteFile(tmp, b, 0o644) == nil {
				_ = os.Rename(tmp, cacheFile)
			}
		}
	}
	return v.Accel, v.Reason, nil
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// probeKVM boots kernel with KVM and the probe initramfs.
func probeKVM(ctx context.Context, qemuBin, kernel string) accelVerdict {
	return runProbe(ctx, qemuBin, kernel, AccelKVM, probeTimeout)
}

// runProbe boots kernel with accel and the probe initramfs; the verdict is
// accel when the probe's init printed its marker within timeout.
func runProbe(ctx context.Context, qemuBin, kernel string, accel Accel, timeout time.Duration) accelVerdict {
	dir, err := os.MkdirTemp("", "strata-kvm-probe-")
	if err != nil {
		return accelVerdict{AccelTCG, fmt.Sprintf("KVM probe: %v", err)}
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "probe.cpio")
	if err := writeProbeInitramfs(initrd); err != nil {
		return accelVerdict{AccelTCG, fmt.Sprintf("KVM probe: %v", err)}
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(pctx, qemuBin, "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", string(accel), "-cpu", map[Accel]string{AccelKVM: "host", AccelTCG: "max"}[accel], "-m", "256", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 rdinit=/init",
		"-serial", "stdio")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	runErr := cmd.Run()
	if strings.Contains(out.String(), probeMarker) {
		return accelVerdict{accel, fmt.Sprintf("probe VM with -accel %s booted in %s", accel, time.Since(start).Round(time.Millisecond))}
	}
	if pctx.Err() != nil {
		return accelVerdict{AccelTCG, fmt.Sprintf("a probe VM with -accel %s did not reach user space within %s (present but unusable for a stock kernel)", accel, timeout)}
	}
	msg := strings.TrimSpace(lastLine(out.String()))
	return accelVerdict{AccelTCG, fmt.Sprintf("a probe VM with -accel %s failed (%v): %s", accel, runErr, msg)}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// writeProbeInitramfs writes an initramfs whose /init is a 170-byte static
// x86-64 program: write(1, marker) then reboot(POWER_OFF).
func writeProbeInitramfs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := initramfs.NewWriter(f)
	_ = w.Dir("dev", 0o755)
	_ = w.CharDev("dev/console", 0o600, 5, 1)
	_ = w.File("init", 0o755, probeELF())
	if err := w.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// probeELF assembles the probe init program.
func probeELF() []byte {
	msg := []byte(probeMarker + "\n")
	code := []byte{
		0xb8, 1, 0, 0, 0, // mov eax, 1 (write)
		0xbf, 1, 0, 0, 0, // mov edi, 1
		0x48, 0x8d, 0x35, 31, 0, 0, 0, // lea rsi, [rip+31] (msg)
		0xba, byte(len(msg)), 0, 0, 0, // mov edx, len
		0x0f, 0x05, // syscall
		0xb8, 169, 0, 0, 0, // mov eax, 169 (reboot)
		0xbf, 0xad, 0xde, 0xe1, 0xfe, // mov edi, 0xfee1dead
		0xbe, 0x69, 0x19, 0x12, 0x28, // mov esi, 0x28121969
		0xba, 0xdc, 0xfe, 0x21, 0x43, // mov edx, POWER_OFF
		0x0f, 0x05, // syscall
		0xeb, 0xfe, // jmp .
	}
	body := append(code, msg...)
	const base = 0x400000
	const hdrSize = 64 + 56
	var b bytes.Buffer
	le := binary.LittleEndian
	// ELF header
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	_ = binary.Write(&b, le, uint16(2))            // ET_EXEC
	_ = binary.Write(&b, le, uint16(62))           // EM_X86_64
	_ = binary.Write(&b, le, uint32(1))            // version
	_ = binary.Write(&b, le, uint64(base+hdrSize)) // entry
	_ = binary.Write(&b, le, uint64(64))           // phoff
	_ = binary.Write(&b, le, uint64(0))            // shoff
	_ = binary.Write(&b, le, uint32(0))            // flags
	_ = binary.Write(&b, le, uint16(64))           // ehsize
	_ = binary.Write(&b, le, uint16(56))           // phentsize
	_ = binary.Write(&b, le, uint16(1))            // phnum
	_ = binary.Write(&b, le, [3]uint16{64, 0, 0})  // shentsize, shnum, shstrndx
	// Program header: PT_LOAD, R+X, the whole file at base.
	total := uint64(hdrSize + len(body))
	_ = binary.Write(&b, le, uint32(1))
	_ = binary.Write(&b, le, uint32(5))
	_ = binary.Write(&b, le, uint64(0))
	_ = binary.Write(&b, le, uint64(base))
	_ = binary.Write(&b, le, uint64(base))
	_ = binary.Write(&b, le, total)
	_ = binary.Write(&b, le, total)
	_ = binary.Write(&b, le, uint64(0x1000))
	b.Write(body)
	return b.Bytes()
}
