"""The Debian 12 guest for the boot test: a cached debootstrap base, and per-run disk images made from it.

Logic overview:
- `build_base()` debootstraps bookworm (minbase + systemd, udev, python3, python3-venv, a kernel, networkd DHCP)
  into `<cache>/base`, once; a `.complete` stamp marks a finished build, so an interrupted one is redone.
- `prepare_rootfs()` copies the base into a scratch tree and hands it to a caller-supplied installer
  (the test runs `make install DESTDIR=...` there, exactly as an image builder would).
- `make_disk()` turns a tree into a raw ext4 image with `mkfs.ext4 -d` (no loop device or mount needed).
- `kernel_for()` returns the kernel and initrd to boot directly; the bzImage is unpacked to a plain ELF vmlinux
  when possible, because QEMU boots that through PVH without the slow real-mode decompression under TCG.

The mirror is the host's own Debian mirror (its apt sources): it is the only one these machines can reach.
"""

from __future__ import annotations

import glob
import lzma
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "systemd", "udev", "dbus", "python3", "python3-venv", "linux-image-amd64",
    "initramfs-tools", "iproute2", "curl", "ca-certificates", "openssh-server", "sudo",
    # The second network manager the hostname-publishing check boots with (networkd is the default one).
    "ifupdown", "isc-dhcp-client",
)
# Only what the guest needs to find its root disk and network; a small initrd unpacks faster under TCG.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic")
NETWORK_FILE = """[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""
FSTAB = "/dev/vda / ext4 rw,relatime 0 1\n"


class GuestError(RuntimeError):
    """A guest build step failed; the message says which and why."""


def host_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d"),
                sources_list: Path = Path("/etc/apt/sources.list"), suite: str = SUITE) -> str:
    """The first Debian mirror in the host's apt sources that serves `suite` itself (not -security)."""
    texts = [p.read_text() for p in sorted(sources_dir.glob("*.sources"))]
    for stanza in "\n\n".join(texts).split("\n\n"):
        fields = _deb822(stanza)
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            return fields["uris"].split()[0]
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2) == suite:
                return m.group(1)
    raise GuestError(f"no apt source for suite {suite!r} in {sources_dir} or {sources_list}")


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def run(cmd: list[str], log: Path | None = None, **kw: object) -> None:
    """Run a command; on failure raise GuestError with the tail of its output."""
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # type: ignore
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n")
    if out.returncode != 0:
        raise GuestError(f"{cmd[0]} failed ({out.returncode}): {out.stdout[-2000:]}")


def build_base(cache: Path, log: Path) -> Path:
    """Debootstrap the base tree once into `cache/base`; reuse it when its stamp is present."""
    base = cache / "base"
    stamp = base / ".complete"
    # The stamp names what was built: a changed package list rebuilds instead of testing a stale guest.
    want = f"{SUITE} {','.join(PACKAGES)}\n"
    if stamp.exists() and stamp.read_text().partition("\n")[2] == want:
        return base
    if base.exists():
        shutil.rmtree(base)
    cache.mkdir(parents=True, exist_ok=True)
    mirror = host_mirror()
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--components=main",
         SUITE, str(base), mirror], log=log)
    _configure_base(base, log)
    stamp.write_text(f"{mirror}\n{want}")
    return base


def _configure_base(base: Path, log: Path) -> None:
    (base / "etc/systemd/network/80-dhcp.network").write_text(NETWORK_FILE)
    (base / "etc/fstab").write_text(FSTAB)
    (base / "etc/hostname").write_text("template\n")
    # An image's machine-id is empty: each VM made from it gets its own at first boot.
    (base / "etc/machine-id").write_text("")
    conf = base / "etc/initramfs-tools/conf.d/azprov-boot-test.conf"
    conf.write_text("MODULES=list\nCOMPRESS=gzip\n")
    (base / "etc/initramfs-tools/modules").write_text("\n".join(INITRD_MODULES) + "\n")
    run(["chroot", str(base), "systemctl", "enable", "systemd-networkd.service"], log=log)
    # ifupdown is there for one variant only: the usual image leaves the network to networkd alone.
    run(["chroot", str(base), "systemctl", "disable", "networking.service"], log=log)
    # No getty on the serial console: nobody logs in, and it would only add noise to the log.
    run(["chroot", str(base), "systemctl", "mask", "serial-getty@ttyS0.service", "getty@tty1.service"], log=log)
    run(["chroot", str(base), "update-initramfs", "-u", "-k", "all"], log=log)
    run(["chroot", str(base), "apt-get", "clean"], log=log)


CLOUD_INIT_CFG = """# boot test: cloud-init as a comparison agent, with Azure as its only datasource
datasource_list: [ Azure ]
"""


def build_cloud_init(cache: Path, base: Path, log: Path) -> Path:
    """A copy of the base with Debian's cloud-init package (Azure datasource only), cached like the base."""
    tree = cache / "base-cloud-init"
    stamp = tree / ".complete"
    want = (base / ".complete").read_text()
    if stamp.exists() and stamp.read_text() == want:
        return tree
    prepare_rootfs(base, tree)
    resolv = tree / "etc/resolv.conf"
    saved = resolv.read_text() if resolv.exists() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)  # apt in the chroot reaches the same mirror as debootstrap did
    try:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        run(["chroot", str(tree), "apt-get", "update", "-q"], log=log, env=env)
        run(["chroot", str(tree), "apt-get", "install", "-y", "-q", "--no-install-recommends", "cloud-init"],
            log=log, env=env)
        run(["chroot", str(tree), "apt-get", "clean"], log=log)
    finally:
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_text(saved)
    (tree / "etc/cloud/cloud.cfg.d/90-boot-test.cfg").write_text(CLOUD_INIT_CFG)
    stamp.write_text(want)
    return tree


def prepare_rootfs(base: Path, dest: Path) -> Path:
    """A fresh copy of the base tree to install into (cp -a keeps owners, modes, links, xattrs)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(base), str(dest)])
    (dest / ".complete").unlink(missing_ok=True)
    return dest


def make_disk(tree: Path, image: Path, size_mb: int = 2048) -> Path:
    """A raw ext4 image holding `tree`, built without mounting anything."""
    image.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(image), f"{size_mb}M"])
    return image


@dataclass(frozen=True)
class Kernel:
    kernel: Path
    initrd: Path


def kernel_for(tree: Path, out_dir: Path) -> Kernel:
    """The newest kernel and its initrd in `tree/boot`, the kernel unpacked to vmlinux when possible."""
    vmlinuz = sorted(glob.glob(str(tree / "boot/vmlinuz-*")))
    if not vmlinuz:
        raise GuestError(f"no kernel in {tree}/boot")
    bz = Path(vmlinuz[-1])
    initrd = tree / "boot" / bz.name.replace("vmlinuz-", "initrd.img-")
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / bz.name.replace("vmlinuz-", "vmlinux-")
    if not elf.exists():
        data = extract_vmlinux(bz.read_bytes())
        if data is not None:
            elf.write_bytes(data)
    return Kernel(kernel=elf if elf.exists() else bz, initrd=initrd)


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (xz or gzip payload), or None if none is found."""
    for magic, unpack in ((b"\xfd7zXZ\x00", _unxz), (b"\x1f\x8b\x08", _ungzip)):
        start = bzimage.find(magic)
        while start != -1:
            data = unpack(bzimage[start:])
            if data is not None and data[:4] == b"\x7fELF":
                return data
            start = bzimage.find(magic, start + 1)
    return None


def _unxz(blob: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
    except lzma.LZMAError:
        return None


def _ungzip(blob: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    except zlib.error:
        return None


def need_root() -> None:
    if os.geteuid() != 0:
        raise GuestError("building the guest needs root (debootstrap, chroot)")
