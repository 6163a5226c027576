package initramfs

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

func TestArchiveListsWithCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.File("sbin/init", 0o755, []byte("#!/bin/sh\necho hi\n")); err != nil {
		t.Fatal(err)
	}
	_ = w.Symlink("bin/sh", "busybox")
	_ = w.CharDev("dev/console", 0o600, 5, 1)
	_ = w.Dir("proc", 0o555)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	list := string(out)
	for _, want := range []string{
		"drwxr-xr-x", " sbin\n", "-rwxr-xr-x", " sbin/init\n", "bin/sh -> busybox",
		"crw-------", "5,", " dev/console\n", "dr-xr-xr-x", " proc\n",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("listing lacks %q:\n%s", want, list)
		}
	}
}
