#!/bin/sh
# What `make test-boot` needs on a Debian/Ubuntu CI machine: QEMU (TCG is enough), debootstrap, e2fsprogs
# (mkfs.ext4 -d, debugfs, e2fsck), systemd's systemctl/systemd-analyze (offline --root use), make.
# Idempotent: installs only what is missing. Needs root.
set -eu
need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null || need="$need e2fsprogs"
command -v systemd-analyze >/dev/null || need="$need systemd"
command -v make >/dev/null || need="$need make"
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need="$need debian-archive-keyring"
if [ -n "$need" ]; then
  echo "ci-deps: installing$need"
  apt-get update -q
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
else
  echo "ci-deps: nothing to install"
fi
