// Package testkernel provides the Debian cloud kernel that tests boot: the
// linux-image-cloud-amd64 package, fetched once with apt-get and extracted
// under CacheDir. It depends on nothing else in strata, so any test package
// (including internal/vm's own) can use it.
package testkernel

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// CacheDir is where the kernel and the fixtures built from it are cached
// across test runs.
const CacheDir = "/var/tmp/strata-test-kernel"

// Get returns the folder holding the extracted kernel package
// (boot/vmlinuz-<version>, lib/modules/<version>/kernel) and its version,
// downloading and extracting it when it is not cached yet.
func Get() (dir, version string, err error) {
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		return "", "", err
	}
	final := filepath.Join(CacheDir, "x")
	if v := find(final); v != "" {
		return final, v, nil
	}
	pkg, err := kernelPackage()
	if err != nil {
		return "", "", err
	}
	tmp, err := os.MkdirTemp(CacheDir, "fetch-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("apt-get", "download", pkg)
	cmd.Dir = tmp
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("apt-get download %s: %v: %s", pkg, err, bytes.TrimSpace(b))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) == 0 {
		return "", "", fmt.Errorf("apt-get download %s left no .deb", pkg)
	}
	x := filepath.Join(tmp, "x")
	if b, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, bytes.TrimSpace(b))
	}
	if find(x) == "" {
		return "", "", fmt.Errorf("%s has no vmlinuz", filepath.Base(debs[0]))
	}
	// Whole or not at all; a concurrent fetch that won the race is as good.
	if err := os.Rename(x, final); err != nil && find(final) == "" {
		return "", "", fmt.Errorf("install kernel: %w", err)
	}
	if v := find(final); v != "" {
		return final, v, nil
	}
	return "", "", fmt.Errorf("no kernel under %s", final)
}

// find returns the newest kernel version extracted below dir, or "".
func find(dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	sort.Strings(m)
	if len(m) == 0 {
		return ""
	}
	v := strings.TrimPrefix(filepath.Base(m[len(m)-1]), "vmlinuz-")
	if _, err := os.Stat(filepath.Join(dir, "lib", "modules", v, "kernel")); err != nil {
		return ""
	}
	return v
}

// kernelPackage names the package linux-image-cloud-amd64 depends on,
// fetching the package lists once on a machine that has none yet.
func kernelPackage() (string, error) {
	depends := func() []byte {
		out, _ := exec.Command("apt-cache", "depends", "linux-image-cloud-amd64").Output()
		return out
	}
	out := depends()
	if !bytes.Contains(out, []byte("Depends: linux-image-")) {
		if b, err := exec.Command("apt-get", "update", "-q").CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get update: %v: %s", err, bytes.TrimSpace(b))
		}
		out = depends()
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "Depends: linux-image-") {
			return strings.TrimPrefix(l, "Depends: "), nil
		}
	}
	return "", fmt.Errorf("apt-cache depends linux-image-cloud-amd64 names no kernel package: %q", out)
}
