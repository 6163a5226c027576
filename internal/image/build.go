// Package image builds, caches, lists and removes the base images VMs boot
// from (vm/debian:12, vm/ubuntu:*): a root disk (qcow2, 60G virtual, only
// ever used read-only as a backing file), the kernel and its initramfs.
//
// A build has two cached levels under Config.ImagesDir:
//
//	rootfs/<key>/rootfs.tar.zst   level 1: mmdebstrap rootfs, keyed by the
//	rootfs/<key>/recipe.json      recipe (suite, mirror, packages, files,
//	                              builder version) — the slow part
//	built/<id>/disk.qcow2         level 2: rootfs + guest agent on an ext4
//	built/<id>/vmlinuz            disk, keyed by level 1 + the agent's
//	built/<id>/initrd.img         SHA-256 — seconds
//	built/<id>/image.json
//	locks/<key|id>.lock           flock: concurrent builds of one image wait
//	tmp/                          builds in progress (renamed into place)
//
// Both levels are built in tmp/ and committed by rename after fsync, so a
// crash never leaves a half image that looks whole.
package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/strata-ci/strata/internal/fsutil"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/strata-ci/strata/internal/vm"
)

// Errors callers may test with errors.Is.
var (
	// ErrNoAgent: no guest agent binary to bake into the image.
	ErrNoAgent = errors.New("no guest agent binary")
	// ErrMissingTool: a host tool the build needs is not installed.
	ErrMissingTool = errors.New("missing host tool")
	// ErrMirror: the package mirror cannot be reached.
	ErrMirror = errors.New("mirror not reachable")
	// ErrNotFound: no such image.
	ErrNotFound = errors.New("no such image")
)

// Built is a base image ready to boot.
type Built struct {
	Name        string   // canonical recipe name, e.g. vm/debian:12
	ID          string   // identity: changes with the recipe and the agent
	Image       vm.Image // paths and kernel command line
	Dir         string   // directory holding the image files
	Size        int64    // bytes used on disk by the image files
	Created     time.Time
	Packages    []string // extra packages (beyond the base set), sorted
	RootfsKey   string   // level-1 cache key
	AgentSHA256 string   // hash of the agent binary inside
}

// imageMeta is image.json.
type imageMeta struct {
	Name        string    `json:"name"`
	ID          string    `json:"id"`
	Packages    []string  `json:"packages"`
	RootfsKey   string    `json:"rootfs_key"`
	AgentSHA256 string    `json:"agent_sha256"`
	Kernel      string    `json:"kernel"`
	Cmdline     string    `json:"cmdline"`
	Mirror      string    `json:"mirror"`
	Builder     string    `json:"builder"`
	Created     time.Time `json:"created"`
}

const (
	metaFile    = "image.json"
	recipeFile  = "recipe.json"
	tarballFile = "rootfs.tar.zst"
	diskFile    = "disk.qcow2"
	kernelFile  = "vmlinuz"
	initrdFile  = "initrd.img"
)

type layout struct{ root string }

func (l layout) built(id string) string   { return filepath.Join(l.root, "built", id) }
func (l layout) rootfs(key string) string { return filepath.Join(l.root, "rootfs", key) }
func (l layout) lock(k string) string     { return filepath.Join(l.root, "locks", k+".lock") }
func (l layout) tmp() string              { return filepath.Join(l.root, "tmp") }

func (l layout) mkdirs() error {
	for _, d := range []string{"built", "rootfs", "locks", "tmp"} {
		if err := os.MkdirAll(filepath.Join(l.root, d), 0o755); err != nil {
			return fmt.Errorf("images dir: %w", err)
		}
	}
	return nil
}

// Ensure returns the image name (after aliases) with extraPackages
// installed, building whatever level is missing. Progress lines go to
// progress (may be nil). Concurrent calls for the same image build it
// once: the others wait and reuse it.
func Ensure(ctx context.Context, cfg Config, name string, extraPackages []string, progress io.Writer) (Built, error) {
	cfg = cfg.withDefaults()
	if progress == nil {
		progress = io.Discard
	}
	if cfg.ImagesDir == "" {
		return Built{}, errors.New("ensure image: no images directory (set STRATA_IMAGES or STRATA_HOME)")
	}
	canon, err := Resolve(cfg, name)
	if err != nil {
		return Built{}, err
	}
	d := recipes[canon]
	extra, err := normalizePackages(extraPackages)
	if err != nil {
		return Built{}, err
	}
	agentSum, err := agentHash(cfg.AgentPath)
	if err != nil {
		return Built{}, err
	}
	spec := d.spec(cfg, extra)
	key := spec.key()
	id := imageID(key, agentSum)
	l := layout{cfg.ImagesDir}
	if b, err := readBuilt(l.built(id)); err == nil {
		return b, nil
	}
	label := canon
	if len(extra) > 0 {
		label += " +" + strings.Join(extra, ",")
	}
	p := &progressor{w: progress, label: label}
	if err := l.mkdirs(); err != nil {
		return Built{}, err
	}
	unlock, err := lockFile(ctx, l.lock(id), func() { p.printf("another build of this image is running; waiting for it") })
	if err != nil {
		return Built{}, fmt.Errorf("ensure %s: %w", label, err)
	}
	defer unlock()
	if b, err := readBuilt(l.built(id)); err == nil {
		p.printf("built by another process: %s", id)
		return b, nil
	}
	start := time.Now()
	tarball, err := ensureRootfs(ctx, cfg, l, d, spec, key, p)
	if err != nil {
		return Built{}, fmt.Errorf("build %s: %w", label, err)
	}
	b, err := buildDisk(ctx, l, spec, key, tarball, cfg.AgentPath, agentSum, id, p)
	if err != nil {
		return Built{}, fmt.Errorf("build %s: %w", label, err)
	}
	p.printf("ready: %s (%s on disk) in %s", b.Dir, humanBytes(b.Size), time.Since(start).Round(100*time.Millisecond))
	return b, nil
}

// diskBuilderVersion is part of every image ID: bump it when level 2
// (unpack, agent, mkfs, convert) changes, so only level 2 is rebuilt.
const diskBuilderVersion = "disk-2"

func imageID(rootfsKey, agentSum string) string {
	sum := sha256.Sum256([]byte(builderVersion + "\x00" + diskBuilderVersion + "\x00" + rootfsKey + "\x00" + agentSum))
	return hex.EncodeToString(sum[:])[:16]
}

func agentHash(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: strata-agent not found beside the strata executable; run `make build` (or set STRATA_AGENT / \"agent_path\" in config.json)", ErrNoAgent)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v; run `make build` (or set STRATA_AGENT)", ErrNoAgent, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash agent %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// progressor writes "image <label>: ..." lines.
type progressor struct {
	w     io.Writer
	label string
}

func (p *progressor) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "image %s: %s\n", p.label, fmt.Sprintf(format, args...))
}

// ensureRootfs returns the level-1 tarball, building it if missing.
func ensureRootfs(ctx context.Context, cfg Config, l layout, d distro, spec rootfsSpec, key string, p *progressor) (string, error) {
	dir := l.rootfs(key)
	tarball := filepath.Join(dir, tarballFile)
	if _, err := os.Stat(filepath.Join(dir, recipeFile)); err == nil {
		p.printf("rootfs cached (%s)", key)
		return tarball, nil
	}
	unlock, err := lockFile(ctx, l.lock("rootfs-"+key), func() { p.printf("another process is bootstrapping this rootfs; waiting for it") })
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, recipeFile)); err == nil {
		return tarball, nil
	}
	cleanStale(l, "rootfs-"+key)
	if err := probeMirror(ctx, cfg, d, spec.Mirror); err != nil {
		return "", err
	}
	mmdebstrap, err := lookTool("mmdebstrap", "mmdebstrap")
	if err != nil {
		return "", err
	}
	if _, err := lookTool("zstd", "zstd"); err != nil {
		return "", err
	}
	if d.Keyring != "" {
		if _, err := os.Stat(d.Keyring); err != nil {
			return "", fmt.Errorf("%w: %s is built from the %s mirror %s and needs its archive keyring at %s "+
				"(package %s-keyring on %s hosts; Debian does not ship it: copy the file there), "+
				"or map the image to one that builds here with an alias in %s: {\"aliases\": {%q: \"vm/debian:12\"}}",
				ErrMissingTool, d.Name, d.Family, spec.Mirror, d.Keyring, d.Family, d.Family,
				filepath.Join(cfg.Home, ConfigFileName), d.Name)
		}
	}
	mode, err := chooseMode(ctx)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(l.tmp(), "rootfs-"+key+".")
	if err != nil {
		return "", fmt.Errorf("rootfs temp dir: %w", err)
	}
	defer removeTree(tmp)
	// Hook inputs live in a world-readable dir: in unshare mode they are
	// read by the namespace's root, a subordinate uid.
	hooks, err := os.MkdirTemp("", "strata-hooks-")
	if err != nil {
		return "", fmt.Errorf("hooks temp dir: %w", err)
	}
	defer os.RemoveAll(hooks)
	if err := os.Chmod(hooks, 0o755); err != nil {
		return "", fmt.Errorf("hooks dir: %w", err)
	}
	early := filepath.Join(hooks, "early.tar")
	files := filepath.Join(hooks, "files.tar")
	customize := filepath.Join(hooks, "customize.sh")
	if err := writeTar(early, spec.EarlyFiles, spec.Modes); err != nil {
		return "", err
	}
	if err := writeTar(files, spec.Files, spec.Modes); err != nil {
		return "", err
	}
	if err := os.WriteFile(customize, []byte(spec.Customize), 0o755); err != nil {
		return "", fmt.Errorf("customize script: %w", err)
	}
	out := filepath.Join(tmp, tarballFile)
	args := []string{
		"--mode=" + mode, "--variant=minbase", "--format=tar",
		"--include=" + strings.Join(spec.Packages, ","),
		"--skip=cleanup/apt/lists",
	}
	for _, o := range spec.DpkgOpts {
		args = append(args, "--dpkgopt="+o)
	}
	if spec.Keyring != "" {
		args = append(args, "--keyring="+spec.Keyring)
	}
	args = append(args,
		"--essential-hook=tar-in "+early+" /",
		"--customize-hook=tar-in "+files+" /",
		"--customize-hook="+customize,
		spec.Suite, out)
	args = append(args, spec.Sources...)
	p.printf("bootstrapping rootfs with mmdebstrap (mode %s, %s %s, %d packages); takes a minute or two", mode, spec.Mirror, spec.Suite, len(spec.Packages))
	start := time.Now()
	if err := runTool(ctx, p, mmdebstrapLine, append([]string{mmdebstrap}, args...)...); err != nil {
		if d.Family != "debian" && ctx.Err() == nil {
			return "", fmt.Errorf("bootstrap rootfs from %s (set \"%s_mirror\" in %s, or alias %q to \"vm/debian:12\" in its \"aliases\"): %w",
				spec.Mirror, d.Family, filepath.Join(cfg.Home, ConfigFileName), d.Name, err)
		}
		return "", fmt.Errorf("bootstrap rootfs from %s: %w", spec.Mirror, err)
	}
	recipe, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return "", fmt.Errorf("recipe: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, recipeFile), recipe, 0o644); err != nil {
		return "", err
	}
	if err := fsutil.SyncFile(out); err != nil {
		return "", err
	}
	if err := commitDir(tmp, dir); err != nil {
		return "", err
	}
	st, _ := os.Stat(tarball)
	size := int64(0)
	if st != nil {
		size = st.Size()
	}
	p.printf("rootfs bootstrapped in %s (%s tarball)", time.Since(start).Round(100*time.Millisecond), humanBytes(size))
	return tarball, nil
}

// mmdebstrapLine picks the mmdebstrap output lines worth showing.
func mmdebstrapLine(s string) bool {
	return strings.HasPrefix(s, "I: ") && !strings.HasPrefix(s, "I: running") || strings.HasPrefix(s, "W: ") || strings.HasPrefix(s, "E: ")
}

// buildDisk builds level 2 from the tarball and the agent.
func buildDisk(ctx context.Context, l layout, spec rootfsSpec, key, tarball, agent, agentSum, id string, p *progressor) (Built, error) {
	tools := map[string]string{}
	for _, t := range []struct{ name, pkg string }{
		{"tar", "tar"}, {"zstd", "zstd"}, {"mkfs.ext4", "e2fsprogs"}, {"qemu-img", "qemu-utils"},
	} {
		path, err := lookTool(t.name, t.pkg)
		if err != nil {
			return Built{}, err
		}
		tools[t.name] = path
	}
	cleanStale(l, id)
	start := time.Now()
	tmp, err := os.MkdirTemp(l.tmp(), id+".")
	if err != nil {
		return Built{}, fmt.Errorf("image temp dir: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			removeTree(tmp)
		}
	}()
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return Built{}, fmt.Errorf("rootfs dir: %w", err)
	}
	p.printf("unpacking rootfs and installing the agent (%s)", agentSum[:12])
	// Device nodes are left out: a user namespace cannot create them, and
	// the initramfs moves its devtmpfs onto /dev anyway. Same in both modes,
	// so an image does not depend on who built it.
	if err := runTool(ctx, p, nil, priv(tools["tar"], "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"--exclude=./dev/*", "-xpf", tarball, "-C", root)...); err != nil {
		return Built{}, fmt.Errorf("unpack rootfs: %w", err)
	}
	if err := runTool(ctx, p, nil, priv("install", "-D", "-m", "0755", "-o", "0", "-g", "0", agent,
		filepath.Join(root, "usr/local/bin/strata-agent"))...); err != nil {
		return Built{}, fmt.Errorf("install agent: %w", err)
	}
	kver, err := copyBoot(root, tmp)
	if err != nil {
		return Built{}, err
	}
	raw := filepath.Join(tmp, "disk.raw")
	if err := makeSparse(raw, DiskSize); err != nil {
		return Built{}, err
	}
	p.printf("making the ext4 root disk (%s virtual)", DiskSize)
	if err := runTool(ctx, p, nil, priv(tools["mkfs.ext4"], "-q", "-F", "-L", "strata-root",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", "-d", root, raw)...); err != nil {
		return Built{}, fmt.Errorf("mkfs.ext4: %w", err)
	}
	if err := removeTree(root); err != nil {
		return Built{}, err
	}
	disk := filepath.Join(tmp, diskFile)
	if err := runTool(ctx, p, nil, tools["qemu-img"], "convert", "-O", "qcow2", raw, disk); err != nil {
		return Built{}, fmt.Errorf("qemu-img convert: %w", err)
	}
	if err := os.Remove(raw); err != nil {
		return Built{}, fmt.Errorf("remove raw disk: %w", err)
	}
	meta := imageMeta{
		Name: spec.Name, ID: id, Packages: spec.Extra, RootfsKey: key, AgentSHA256: agentSum,
		Kernel: kver, Cmdline: spec.Cmdline, Mirror: spec.Mirror, Builder: builderVersion,
		Created: time.Now().UTC().Truncate(time.Second),
	}
	if meta.Packages == nil {
		meta.Packages = []string{}
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return Built{}, fmt.Errorf("image metadata: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, metaFile), data, 0o644); err != nil {
		return Built{}, err
	}
	for _, f := range []string{diskFile, kernelFile, initrdFile} {
		path := filepath.Join(tmp, f)
		if err := fsutil.SyncFile(path); err != nil {
			return Built{}, err
		}
		if err := os.Chmod(path, 0o444); err != nil { // backing files are never written
			return Built{}, fmt.Errorf("chmod %s: %w", f, err)
		}
	}
	final := l.built(id)
	if err := commitDir(tmp, final); err != nil {
		return Built{}, err
	}
	committed = true
	p.printf("disk built in %s", time.Since(start).Round(100*time.Millisecond))
	return readBuilt(final)
}

// copyBoot copies the newest kernel and its initramfs out of the rootfs.
func copyBoot(root, dst string) (string, error) {
	kernels, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil || len(kernels) == 0 {
		return "", errors.New("no kernel in the rootfs's /boot")
	}
	sort.Strings(kernels)
	k := kernels[len(kernels)-1]
	kver := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
	if err := copyFile(k, filepath.Join(dst, kernelFile)); err != nil {
		return "", fmt.Errorf("copy kernel: %w", err)
	}
	if err := copyFile(filepath.Join(root, "boot", "initrd.img-"+kver), filepath.Join(dst, initrdFile)); err != nil {
		return "", fmt.Errorf("copy initramfs: %w", err)
	}
	return kver, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// makeSparse creates a sparse file of the given size ("60G").
func makeSparse(path, size string) error {
	n, err := parseSize(size)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	if err := f.Truncate(n); err != nil {
		f.Close()
		return fmt.Errorf("size disk: %w", err)
	}
	return f.Close()
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// readBuilt loads a committed image directory.
func readBuilt(dir string) (Built, error) {
	data, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return Built{}, err
	}
	var m imageMeta
	if err := json.Unmarshal(data, &m); err != nil {
		return Built{}, fmt.Errorf("image %s: %w", dir, err)
	}
	b := Built{
		Name: m.Name, ID: m.ID, Dir: dir, Created: m.Created, Packages: m.Packages,
		RootfsKey: m.RootfsKey, AgentSHA256: m.AgentSHA256,
		Image: vm.Image{
			Disk:    filepath.Join(dir, diskFile),
			Kernel:  filepath.Join(dir, kernelFile),
			Initrd:  filepath.Join(dir, initrdFile),
			Cmdline: m.Cmdline,
		},
	}
	for _, f := range []string{diskFile, kernelFile, initrdFile, metaFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			return Built{}, fmt.Errorf("image %s: %w", dir, err)
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			b.Size += sys.Blocks * 512
		} else {
			b.Size += st.Size()
		}
	}
	return b, nil
}

// writeTar writes files (path → content) as a tar owned by root, with
// directory entries for every parent.
func writeTar(path string, files map[string]string, modes map[string]int) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		var parents []string
		for d := filepath.Dir(n); d != "." && d != "/"; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./" + d + "/", Mode: 0o755,
				Uname: "root", Gname: "root", ModTime: mtime, Format: tar.FormatGNU}); err != nil {
				return fmt.Errorf("tar %s: %w", path, err)
			}
		}
		mode := 0o644
		if m, ok := modes[n]; ok {
			mode = m
		}
		body := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "./" + n, Mode: int64(mode), Size: int64(len(body)),
			Uname: "root", Gname: "root", ModTime: mtime, Format: tar.FormatGNU}); err != nil {
			return fmt.Errorf("tar %s: %w", path, err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return fmt.Errorf("tar %s: %w", path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("tar %s: %w", path, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// probeMirror checks that the mirror serves the suite, so an unreachable
// mirror fails in seconds with advice instead of deep inside mmdebstrap.
func probeMirror(ctx context.Context, cfg Config, d distro, mirror string) error {
	if !strings.HasPrefix(mirror, "http://") && !strings.HasPrefix(mirror, "https://") {
		return nil
	}
	url := mirror + "/dists/" + d.Suite + "/InRelease"
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return mirrorError(cfg, d, mirror, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return mirrorError(cfg, d, mirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return mirrorError(cfg, d, mirror, fmt.Errorf("GET %s: %s", url, resp.Status))
	}
	return nil
}

func mirrorError(cfg Config, d distro, mirror string, err error) error {
	file := filepath.Join(cfg.Home, ConfigFileName)
	if d.Family == "ubuntu" {
		return fmt.Errorf("%w: %s needs the Ubuntu mirror %s, which is not reachable (%v). "+
			"Set \"ubuntu_mirror\" in %s (or STRATA_UBUNTU_MIRROR) to a reachable Ubuntu mirror, "+
			"or map the image to one that builds here with an alias in the same file: {\"aliases\": {%q: \"vm/debian:12\"}}",
			ErrMirror, d.Name, mirror, err, file, d.Name)
	}
	return fmt.Errorf("%w: %s needs the Debian mirror %s, which is not reachable (%v). "+
		"Set \"debian_mirror\" in %s (or STRATA_DEBIAN_MIRROR) to a reachable Debian mirror",
		ErrMirror, d.Name, mirror, err, file)
}

// chooseMode picks mmdebstrap's mode: unshare when user namespaces with
// subordinate ids work, else root when we are root.
func chooseMode(ctx context.Context) (string, error) {
	if unshareWorks(ctx) {
		return "unshare", nil
	}
	if os.Geteuid() == 0 {
		return "root", nil
	}
	user := os.Getenv("USER")
	if user == "" {
		user = fmt.Sprint(os.Getuid())
	}
	return "", fmt.Errorf("%w: building a rootfs needs either root or a rootless user namespace: "+
		"give %s subordinate ids (`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s`, "+
		"entries in /etc/subuid and /etc/subgid), install uidmap (newuidmap/newgidmap) and allow "+
		"unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)", ErrMissingTool, user, user)
}

func unshareWorks(ctx context.Context) bool {
	if _, err := exec.LookPath("newuidmap"); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "unshare", "--user", "--map-root-user", "--map-auto", "true").Run() == nil
}

// priv prefixes a command so it runs as root, or as root of a user
// namespace with the subordinate ids when we are not root (matching the
// ownership of a rootfs unpacked that way).
func priv(args ...string) []string {
	if os.Geteuid() == 0 {
		return args
	}
	return append([]string{"unshare", "--map-root-user", "--map-auto", "--"}, args...)
}

// removeTree removes a directory tree, entering the user namespace when
// plain removal fails (files owned by subordinate ids).
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err != nil && os.Geteuid() != 0 {
		if exec.Command(priv("rm", "-rf", path)[0], priv("rm", "-rf", path)[1:]...).Run() == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// cleanStale removes temp dirs left by crashed builds of prefix. Call it
// with the build lock for prefix held.
func cleanStale(l layout, prefix string) {
	old, _ := filepath.Glob(filepath.Join(l.tmp(), prefix+".*"))
	for _, d := range old {
		_ = removeTree(d)
	}
}

// lookTool finds a host tool, also in the sbin directories a non-root
// PATH often lacks.
func lookTool(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s not found; install it with `apt-get install %s`", ErrMissingTool, name, pkg)
}

// runTool runs a command, forwarding the lines show accepts (none when
// show is nil) to p, and returns an error carrying the last lines of output
// when it fails. Cancelling ctx sends SIGTERM to its process group (so
// mmdebstrap unmounts what it mounted in root mode), then SIGKILL after 30s.
func runTool(ctx context.Context, p *progressor, show func(string) bool, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("start %s: %w", filepath.Base(argv[0]), err)
	}
	w.Close()
	var tail []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if show != nil && show(line) {
			fmt.Fprintf(p.w, "  %s\n", line)
		}
		tail = append(tail, line)
		if len(tail) > 40 {
			tail = tail[1:]
		}
	}
	r.Close()
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w; last output:\n%s", filepath.Base(argv[0]), err, strings.Join(tail, "\n"))
	}
	return nil
}

func writeFileSync(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// commitDir makes tmp world-readable, fsyncs it, renames it to final and
// fsyncs final's parent.
func commitDir(tmp, final string) error {
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("commit %s: %w", final, err)
	}
	if err := fsutil.SyncFile(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("commit %s: %w", final, err)
	}
	return fsutil.SyncFile(filepath.Dir(final))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}
