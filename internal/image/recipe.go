package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// builderVersion is part of every rootfs cache key. Bump it whenever the
// build steps or the files written into images change in a way the recipe
// text does not capture.
const builderVersion = "strata-image-1"

// DiskSize is the virtual size of every base image's root disk.
const DiskSize = "60G"

// Cmdline is the kernel command line of every base image. No panic=
// setting: what happens on a kernel panic is the driver's choice.
// no_timer_check: on a loaded host the TCG guest's timer check can fail and
// panic the kernel ("IO-APIC + timer doesn't work").
//
// init_on_free=1: freed guest memory is zeroed, so memory snapshots carry
// it as zero pages (QEMU sends a marker, zstd nothing): measured here, a
// plain VM's state went from ~50 MiB to ~30 MiB.
const Cmdline = "root=/dev/vda rootfstype=ext4 rw console=ttyS0 net.ifnames=0 no_timer_check init_on_free=1 quiet"

// requiredModules must be in the initramfs (or built into the kernel).
var requiredModules = []string{"virtio_pci", "virtio_blk", "virtio_console", "virtio_net", "ext4"}

// basePackages are installed in every image, on top of --variant=minbase.
var basePackages = []string{
	"systemd", "systemd-sysv", "udev", "kmod", "initramfs-tools",
	"bash", "sudo", "curl", "wget", "ca-certificates", "gnupg", "lsb-release",
	"git", "iproute2", "iputils-ping", "netbase", "procps", "less", "xz-utils", "zstd",
}

// distro describes one buildable base image.
type distro struct {
	Name       string   // vm/debian:12
	Family     string   // debian or ubuntu
	Suite      string   // bookworm
	Components []string // main, universe
	Kernel     string   // kernel package
	Updates    bool     // add <suite>-updates
	Keyring    string   // host keyring for the archive ("" = host default)
}

// recipes are the built-in images, keyed by canonical name.
var recipes = map[string]distro{
	"vm/debian:12": {Name: "vm/debian:12", Family: "debian", Suite: "bookworm",
		Components: []string{"main"}, Kernel: "linux-image-cloud-amd64", Updates: true},
	"vm/ubuntu:18.04": ubuntu("18.04", "bionic"),
	"vm/ubuntu:22.04": ubuntu("22.04", "jammy"),
	"vm/ubuntu:24.04": ubuntu("24.04", "noble"),
}

func ubuntu(version, suite string) distro {
	return distro{Name: "vm/ubuntu:" + version, Family: "ubuntu", Suite: suite,
		Components: []string{"main", "universe"}, Kernel: "linux-image-virtual", Updates: true,
		Keyring: "/usr/share/keyrings/ubuntu-archive-keyring.gpg"}
}

// RecipeNames lists the built-in image names, sorted.
func RecipeNames() []string {
	names := make([]string, 0, len(recipes))
	for n := range recipes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var packageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

// normalizePackages validates, sorts and dedups extra package names.
func normalizePackages(pkgs []string) ([]string, error) {
	set := map[string]bool{}
	for _, p := range pkgs {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !packageName.MatchString(p) {
			return nil, &BadPackageError{Name: p}
		}
		set[p] = true
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// BadPackageError reports an extra package name that is not a Debian
// package name.
type BadPackageError struct{ Name string }

func (e *BadPackageError) Error() string {
	return fmt.Sprintf("bad package name %q: want a Debian package name such as docker.io (lower case letters, digits, + - .)", e.Name)
}

// rootfsSpec is everything that determines the rootfs tarball. Its JSON
// hash is the level-1 cache key, and it is stored next to the tarball.
type rootfsSpec struct {
	Builder    string            `json:"builder"`
	Name       string            `json:"name"`
	Family     string            `json:"family"`
	Suite      string            `json:"suite"`
	Mirror     string            `json:"mirror"`
	Sources    []string          `json:"sources"` // mmdebstrap mirror arguments
	Components []string          `json:"components"`
	Keyring    string            `json:"keyring,omitempty"`
	Packages   []string          `json:"packages"` // all, sorted
	Extra      []string          `json:"extra"`    // the extra ones, sorted
	DpkgOpts   []string          `json:"dpkg_opts"`
	EarlyFiles map[string]string `json:"early_files"` // path → content, before the kernel is installed
	Files      map[string]string `json:"files"`       // path → content, after all packages
	Modes      map[string]int    `json:"modes"`       // path → mode when not 0644
	Customize  string            `json:"customize"`   // script run with the rootfs as $1
	Cmdline    string            `json:"cmdline"`
}

// key is the level-1 cache key.
func (s rootfsSpec) key() string {
	data, err := json.Marshal(s)
	if err != nil {
		panic(err) // only strings, maps and slices: cannot fail
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:24]
}

func (d distro) mirror(cfg Config) string {
	if d.Family == "ubuntu" {
		return cfg.UbuntuMirror
	}
	return cfg.Mirror
}

// spec builds the rootfs spec of d with extra packages (already normalized).
func (d distro) spec(cfg Config, extra []string) rootfsSpec {
	mirror := d.mirror(cfg)
	comps := strings.Join(d.Components, " ")
	sources := []string{fmt.Sprintf("deb %s %s %s", mirror, d.Suite, comps)}
	if d.Updates {
		sources = append(sources, fmt.Sprintf("deb %s %s-updates %s", mirror, d.Suite, comps))
	}
	pkgs := append(append(append([]string{}, basePackages...), d.Kernel), extra...)
	pkgs, _ = normalizePackages(pkgs)
	return rootfsSpec{
		Builder: builderVersion, Name: d.Name, Family: d.Family, Suite: d.Suite,
		Mirror: mirror, Sources: sources, Components: d.Components, Keyring: d.Keyring,
		Packages: pkgs, Extra: extra,
		DpkgOpts: []string{
			"path-exclude=/usr/share/man/*",
			"path-exclude=/usr/share/info/*",
			"path-exclude=/usr/share/doc/*",
			"path-include=/usr/share/doc/*/copyright",
		},
		EarlyFiles: map[string]string{
			"etc/initramfs-tools/hooks/strata": initramfsHook,
			// Only the modules a QEMU guest needs (the hook adds them): a
			// small initramfs unpacks and coldplugs in a fraction of the
			// time under TCG.
			"etc/initramfs-tools/conf.d/strata.conf": "MODULES=list\nCOMPRESS=zstd\n",
		},
		Files:     configFiles(),
		Modes:     map[string]int{"etc/initramfs-tools/hooks/strata": 0o755},
		Customize: customizeScript,
		Cmdline:   Cmdline,
	}
}

// initramfsHook makes sure the virtio and ext4 modules are in the
// initramfs whatever MODULES= says. It is installed before the kernel so
// the kernel's own postinst builds the right initramfs.
var initramfsHook = `#!/bin/sh
# Installed by strata: modules a QEMU guest needs to find its root disk.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
for m in ` + strings.Join(requiredModules, " ") + `; do
	manual_add_modules "$m"
done
`

// agentUnit starts the guest agent as early as possible. Waiting for the
// virtio-serial port is the agent's own job.
const agentUnit = `[Unit]
Description=strata guest agent
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/local/bin/strata-agent
Restart=always
RestartSec=200ms
OOMScoreAdjust=-1000
# RUN BACKGROUND processes outlive an agent restart, and RUN commands are
# not limited by the agent unit's task count.
KillMode=process
TasksMax=infinity

[Install]
WantedBy=sysinit.target
`

// configFiles are written into the rootfs after all packages are installed.
func configFiles() map[string]string {
	return map[string]string{
		"etc/hostname":                         "layerfile\n",
		"etc/hosts":                            "127.0.0.1\tlocalhost\n127.0.1.1\tlayerfile\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
		"etc/resolv.conf":                      "# QEMU user-mode networking DNS\nnameserver 10.0.2.3\n",
		"etc/fstab":                            "# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 defaults,noatime,errors=remount-ro 0 0\n",
		"etc/machine-id":                       "", // empty: a transient id at every boot, no first-boot work
		"etc/systemd/network/20-wired.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n[DHCPv4]\nUseDNS=no\n",
		"etc/systemd/system/systemd-networkd-wait-online.service.d/strata.conf": "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n",
		"etc/systemd/system/strata-agent.service":                               agentUnit,
		"etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf":        "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM\n",
		"etc/systemd/journald.conf.d/strata.conf":                               "[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n",
		"etc/apt/apt.conf.d/90strata": "// strata: CI machines never ask.\nAPT::Get::Assume-Yes \"true\";\nAcquire::Languages \"none\";\n" +
			"APT::Periodic::Enable \"0\";\nDpkg::Options { \"--force-confdef\"; \"--force-confold\"; };\n",
		"etc/profile.d/strata.sh": "export DEBIAN_FRONTEND=noninteractive\n",
	}
}

// customizeScript runs after packages and files are in place, with the
// rootfs as $1 (mmdebstrap runs it as root, or as root of a user namespace).
const customizeScript = `#!/bin/sh
set -eu
root="$1"
ch() { chroot "$root" "$@"; }
ch systemctl enable systemd-networkd.service strata-agent.service >/dev/null 2>&1
ch systemctl set-default multi-user.target >/dev/null 2>&1
# Nothing periodic or slow at boot under TCG.
for u in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
	e2scrub_reap.service fstrim.timer dpkg-db-backup.timer logrotate.timer \
	systemd-timesyncd.service motd-news.timer systemd-journal-flush.service \
	unattended-upgrades.service getty@tty1.service getty-static.service; do
	ch systemctl mask "$u" >/dev/null 2>&1
done
ch passwd -d root >/dev/null
mkdir -p "$root/usr/local/bin"
# The initramfs must hold the drivers for the root disk and the agent port.
n=0
for k in "$root"/boot/vmlinuz-*; do
	v="${k##*/vmlinuz-}"
	[ -f "$root/boot/initrd.img-$v" ] || { echo "E: no initramfs for kernel $v" >&2; exit 1; }
	list="$(ch lsinitramfs "/boot/initrd.img-$v")"
	for m in ` + "virtio_pci virtio_blk virtio_console virtio_net ext4" + `; do
		if ! printf '%s\n' "$list" | grep -q "/$m\.ko" &&
			! grep -q "/$m\.ko" "$root/lib/modules/$v/modules.builtin" 2>/dev/null; then
			echo "E: module $m is neither in the initramfs of $v nor built in" >&2
			exit 1
		fi
	done
	n=$((n+1))
done
[ "$n" -gt 0 ] || { echo "E: no kernel in /boot" >&2; exit 1; }
# VMs boot the kernel and initramfs extracted at build time, so rebuilding
# the initramfs inside the guest (a trigger of many packages: minutes under
# TCG) is wasted work.
if [ -f "$root/etc/initramfs-tools/update-initramfs.conf" ]; then
	sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root/etc/initramfs-tools/update-initramfs.conf"
fi
echo "I: strata: initramfs has ` + "virtio_pci virtio_blk virtio_console virtio_net ext4" + `"
`
