package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	cfg := Config{Aliases: map[string]string{
		"vm/ubuntu:18.04":     "vm/debian:12",
		"library/python:3.11": "vm/ubuntu:18.04",
		"a":                   "b",
		"b":                   "a",
	}}
	for name, want := range map[string]string{
		"vm/debian:12":        "vm/debian:12",
		"vm/debian:bookworm":  "vm/debian:12",
		"vm/ubuntu:18.04":     "vm/debian:12", // the config alias wins over the recipe
		"library/python:3.11": "vm/debian:12",
		"vm/ubuntu:22.04":     "vm/ubuntu:22.04",
		"ubuntu:22.04":        "vm/ubuntu:22.04",
	} {
		got, err := Resolve(cfg, name)
		if err != nil {
			t.Errorf("Resolve(%q): %v", name, err)
			continue
		}
		if got != want {
			t.Errorf("Resolve(%q) = %q, want %q", name, got, want)
		}
	}
	_, err := Resolve(cfg, "a")
	if err == nil || !strings.Contains(err.Error(), "alias loop") {
		t.Errorf("Resolve(a) = %v, want alias loop", err)
	}
	_, err = Resolve(cfg, "library/redis:7")
	var unknown *UnknownImageError
	if !errors.As(err, &unknown) {
		t.Fatalf("Resolve(library/redis:7) = %v, want UnknownImageError", err)
	}
	for _, want := range []string{`unknown image "library/redis:7"`, "vm/debian:12", "aliases", "config.json"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	home := t.TempDir()
	t.Setenv("STRATA_HOME", home)
	t.Setenv("STRATA_IMAGES", "")
	t.Setenv("STRATA_DEBIAN_MIRROR", "")
	t.Setenv("STRATA_UBUNTU_MIRROR", "http://ubuntu.example/ubuntu/")
	t.Setenv("STRATA_AGENT", "/opt/agent")
	cfg, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Home != home || cfg.ImagesDir != filepath.Join(home, "images") || cfg.Mirror != DefaultMirror ||
		cfg.UbuntuMirror != "http://ubuntu.example/ubuntu" || cfg.AgentPath != "/opt/agent" {
		t.Errorf("defaults: %+v", cfg)
	}
	file := `{"debian_mirror": "http://mirror.local/debian", "images_dir": "/srv/img",
		"aliases": {"vm/ubuntu:18.04": "vm/debian:12"}, "someone_elses_key": 3}`
	if err := os.WriteFile(filepath.Join(home, ConfigFileName), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mirror != "http://mirror.local/debian" || cfg.ImagesDir != "/srv/img" || cfg.Aliases["vm/ubuntu:18.04"] != "vm/debian:12" {
		t.Errorf("from file: %+v", cfg)
	}
	t.Setenv("STRATA_IMAGES", "/env/img")
	if cfg, _ = LoadConfig(); cfg.ImagesDir != "/env/img" {
		t.Errorf("STRATA_IMAGES should win over the file: %q", cfg.ImagesDir)
	}
	if err := os.WriteFile(filepath.Join(home, ConfigFileName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(); err == nil || !strings.Contains(err.Error(), ConfigFileName) {
		t.Errorf("malformed config: %v", err)
	}
}

func TestDefaultHome(t *testing.T) {
	t.Setenv("STRATA_HOME", "")
	t.Setenv("XDG_DATA_HOME", "/xdg")
	if h, _ := DefaultHome(); h != "/xdg/strata" {
		t.Errorf("DefaultHome = %q", h)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/u")
	if h, _ := DefaultHome(); h != "/home/u/.local/share/strata" {
		t.Errorf("DefaultHome = %q", h)
	}
}

func TestNormalizePackages(t *testing.T) {
	got, err := normalizePackages([]string{"docker.io", " busybox-static", "docker.io", "", "g++"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "busybox-static,docker.io,g++" {
		t.Errorf("got %v", got)
	}
	for _, bad := range []string{"Docker", "rm -rf", "a;b", "-x", "x"} {
		if _, err := normalizePackages([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRootfsKey(t *testing.T) {
	cfg := Config{}.withDefaults()
	d := recipes["vm/debian:12"]
	base := d.spec(cfg, nil).key()
	if base != d.spec(cfg, nil).key() {
		t.Fatal("key is not deterministic")
	}
	if base == d.spec(cfg, []string{"docker.io"}).key() {
		t.Error("extra packages do not change the key")
	}
	cfg2 := cfg
	cfg2.Mirror = "http://other/debian"
	if base == d.spec(cfg2, nil).key() {
		t.Error("mirror does not change the key")
	}
	// The agent changes only the image ID, not the rootfs key.
	if imageID(base, "a") == imageID(base, "b") {
		t.Error("agent hash does not change the image ID")
	}
	s := d.spec(cfg, []string{"docker.io"})
	for _, p := range []string{"systemd", "systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools",
		"bash", "sudo", "curl", "ca-certificates", "git", "iproute2", "procps", "less", "docker.io"} {
		found := false
		for _, q := range s.Packages {
			found = found || q == p
		}
		if !found {
			t.Errorf("package %s missing from %v", p, s.Packages)
		}
	}
	if s.Sources[0] != "deb http://deb.debian.org/debian bookworm main" {
		t.Errorf("sources: %v", s.Sources)
	}
	u := recipes["vm/ubuntu:22.04"].spec(cfg, nil)
	if u.Sources[0] != "deb http://archive.ubuntu.com/ubuntu jammy main universe" {
		t.Errorf("ubuntu sources: %v", u.Sources)
	}
}

func TestConfigFilesContent(t *testing.T) {
	f := configFiles()
	checks := map[string]string{
		"etc/hostname":                            "layerfile\n",
		"etc/resolv.conf":                         "nameserver 10.0.2.3",
		"etc/hosts":                               "127.0.1.1\tlayerfile",
		"etc/fstab":                               "/dev/vda / ext4",
		"etc/apt/apt.conf.d/90strata":             `APT::Get::Assume-Yes "true";`,
		"etc/systemd/network/20-wired.network":    "Name=en* eth*",
		"etc/systemd/system/strata-agent.service": "DefaultDependencies=no",
	}
	for path, want := range checks {
		if !strings.Contains(f[path], want) {
			t.Errorf("%s = %q, want it to contain %q", path, f[path], want)
		}
	}
	if !strings.Contains(agentUnit, "Restart=always") || !strings.Contains(agentUnit, "ExecStart=/usr/local/bin/strata-agent") {
		t.Errorf("agent unit: %s", agentUnit)
	}
}

func TestWriteTar(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.tar")
	err := writeTar(path, map[string]string{"etc/a/b": "hello", "etc/c": "x"}, map[string]int{"etc/a/b": 0o755})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		got = append(got, h.Name+":"+strings.TrimPrefix(os.FileMode(h.Mode).String(), "-"))
	}
	want := "./etc/:rwxr-xr-x ./etc/a/:rwxr-xr-x ./etc/a/b:rwxr-xr-x ./etc/c:rw-r--r--"
	if strings.Join(got, " ") != want {
		t.Errorf("entries %q, want %q", strings.Join(got, " "), want)
	}
}

func TestEnsureBadInput(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Home: dir, ImagesDir: filepath.Join(dir, "images"), AgentPath: agent}
	ctx := context.Background()

	_, err := Ensure(ctx, cfg, "vm/centos:7", nil, nil)
	var unknown *UnknownImageError
	if !errors.As(err, &unknown) {
		t.Errorf("unknown image: %v", err)
	}
	_, err = Ensure(ctx, cfg, "vm/debian:12", []string{"docker io"}, nil)
	var bad *BadPackageError
	if !errors.As(err, &bad) {
		t.Errorf("bad package: %v", err)
	}
	noAgent := cfg
	noAgent.AgentPath = filepath.Join(dir, "missing")
	_, err = Ensure(ctx, noAgent, "vm/debian:12", nil, nil)
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "make build") {
		t.Errorf("missing agent: %v", err)
	}
}

// An unreachable Ubuntu mirror fails fast, naming the mirror and the alias
// configuration that works around it.
func TestEnsureUbuntuMirrorUnreachable(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Home: dir, ImagesDir: filepath.Join(dir, "images"), AgentPath: agent,
		UbuntuMirror: "http://127.0.0.1:9/ubuntu"}
	start := time.Now()
	_, err := Ensure(context.Background(), cfg, "vm/ubuntu:22.04", nil, nil)
	if !errors.Is(err, ErrMirror) {
		t.Fatalf("err = %v, want ErrMirror", err)
	}
	for _, want := range []string{"http://127.0.0.1:9/ubuntu", "ubuntu_mirror", `"aliases"`,
		`"vm/ubuntu:22.04": "vm/debian:12"`, filepath.Join(dir, "config.json")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if d := time.Since(start); d > 25*time.Second {
		t.Errorf("took %s to fail", d)
	}
	// An alias makes the same name resolve to Debian.
	cfg.Aliases = map[string]string{"vm/ubuntu:18.04": "vm/debian:12"}
	if got, _ := Resolve(cfg, "vm/ubuntu:18.04"); got != "vm/debian:12" {
		t.Errorf("alias: %q", got)
	}
}

// fakeImage commits an image directory the way buildDisk does.
func fakeImage(t *testing.T, root, name, id, key string, pkgs []string, created time.Time) {
	t.Helper()
	l := layout{root}
	if err := l.mkdirs(); err != nil {
		t.Fatal(err)
	}
	dir := l.built(id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{diskFile, kernelFile, initrdFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("data of "+f), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	m := imageMeta{Name: name, ID: id, Packages: pkgs, RootfsKey: key, Cmdline: Cmdline, Created: created}
	data, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, metaFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	rdir := l.rootfs(key)
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]string{"name": name})
	if err := os.WriteFile(filepath.Join(rdir, recipeFile), rec, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestListAndRemove(t *testing.T) {
	root := t.TempDir()
	cfg := Config{Home: root, ImagesDir: root}
	now := time.Now().UTC().Truncate(time.Second)
	fakeImage(t, root, "vm/debian:12", "aaaa000000000001", "k1", nil, now.Add(-time.Hour))
	fakeImage(t, root, "vm/debian:12", "aaaa000000000002", "k1", nil, now)
	fakeImage(t, root, "vm/debian:12", "bbbb000000000003", "k2", []string{"docker.io"}, now)
	fakeImage(t, root, "vm/ubuntu:22.04", "cccc000000000004", "k3", nil, now)

	all, err := List(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range all {
		ids = append(ids, b.ID)
	}
	if strings.Join(ids, " ") != "aaaa000000000002 bbbb000000000003 aaaa000000000001 cccc000000000004" {
		t.Errorf("List order: %v", ids)
	}
	b := all[0]
	if b.Image.Disk != filepath.Join(root, "built", b.ID, "disk.qcow2") || b.Image.Cmdline != Cmdline || b.Size <= 0 {
		t.Errorf("built: %+v", b)
	}

	if err := Remove(cfg, "aaaa"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if err := Remove(cfg, "zzzz9"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	// Removing one build keeps the rootfs another build still uses.
	if err := Remove(cfg, "aaaa000000000001"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "rootfs", "k1")); err != nil {
		t.Errorf("rootfs k1 removed while still used: %v", err)
	}
	// Removing the last user of a rootfs removes the rootfs too.
	if err := Remove(cfg, "cccc000000000004"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "rootfs", "k3")); !os.IsNotExist(err) {
		t.Errorf("rootfs k3 left behind: %v", err)
	}
	// A name removes every build of it and its rootfs tarballs.
	if err := Remove(cfg, "vm/debian:bookworm"); err != nil {
		t.Fatal(err)
	}
	all, _ = List(cfg)
	if len(all) != 0 {
		t.Errorf("left: %+v", all)
	}
	left, _ := filepath.Glob(filepath.Join(root, "rootfs", "*"))
	tmp, _ := filepath.Glob(filepath.Join(root, "tmp", "*"))
	if len(left)+len(tmp) != 0 {
		t.Errorf("left behind: %v %v", left, tmp)
	}
}

func TestLockWaits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	ctx := context.Background()
	unlock, err := lockFile(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var waited sync.WaitGroup
	waited.Add(1)
	got := make(chan error, 1)
	go func() {
		u, err := lockFile(ctx, path, waited.Done)
		if err == nil {
			u()
		}
		got <- err
	}()
	waited.Wait() // the second locker saw the lock held
	select {
	case err := <-got:
		t.Fatalf("second lock taken while held: %v", err)
	default:
	}
	unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// A held lock and a cancelled context: the wait ends with the context's error.
	unlock, _ = lockFile(ctx, path, nil)
	defer unlock()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := lockFile(cctx, path, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestScriptsParse(t *testing.T) {
	for name, script := range map[string]string{"customize": customizeScript, "initramfs hook": initramfsHook} {
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s script: %v\n%s", name, err, out)
		}
	}
}
