#!/usr/bin/env bash
# Installs what strata needs on a Debian 12 host: QEMU, qemu-img, a Debian
# bootstrapper, mkfs.ext4, zstd. Safe to run again: it installs only what is
# missing. Needs root (or sudo) the first time.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v zstd >/dev/null || need+=(zstd)
command -v cpio >/dev/null || need+=(cpio)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v git >/dev/null || need+=(git)
command -v make >/dev/null || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "setup: Go 1.22 or newer is needed (https://go.dev/dl)" >&2; exit 1; }
echo "setup: ok ($(qemu-system-x86_64 --version | head -1); $(go version))"
