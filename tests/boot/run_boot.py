"""End-to-end boot test: azprov as a systemd unit in a Debian 12 guest under QEMU, against the fake fabric.

Logic overview:
1. Preflight: qemu-system-x86_64, debootstrap, mkfs.ext4/debugfs/e2fsck and root are needed. Missing ones are
   reported loudly and the run fails, unless AZPROV_SKIP_BOOT=1 (then it says SKIPPED and exits 0).
2. The guest: a cached debootstrap base (guest.py), copied, with azprov installed exactly as an image builder
   would (`make wheelhouse`, `make install DESTDIR=<rootfs> WHEELHOUSE=...`, `systemctl --root preset`), plus a
   test-only unit that writes a report (unit state, `azprov --status --json`, journal) and powers off.
3. Each boot: a fresh QEMU (TCG unless the CPU shows vmx/svm) with slirp networking (restrict=on, ipv6=off,
   net=168.0.0.0/7) whose guestfwd rules take the WireServer and IMDS addresses (port 80) to relay.py, which only
   connects to the in-process FakeFabric on 127.0.0.1. The guest uses the real default endpoints.
4. Scenarios: first boot; power cut while the fabric holds the health POST, then boot again;
   reboot of the provisioned VM (no fabric traffic); a new VM from the same disk (-uuid changed); the
   opt-out on the kernel command line. Optionally the article's unit on the same guest, for timings.
5. Assertions use the fabric's log (host side) and the report read from the disk image after shutdown
   (debugfs, no mount). Timings: QEMU start → Ready accepted (host monotonic clock, the fake's log uses it).

Run: `sudo python3 tests/boot/run_boot.py [--scenario NAME ...] [--no-seed] [--record]` (see --help).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "tests"), str(REPO)]

import guest  # noqa: E402
import pcap  # noqa: E402
import seed  # noqa: E402
from fakefabric import FakeFabric  # noqa: E402

from statemachine.resume import normalize  # noqa: E402

CACHE = Path(os.environ.get("AZPROV_BOOT_CACHE", "/var/cache/azprov-boot"))
BOOT_TIMEOUT = float(os.environ.get("AZPROV_BOOT_TIMEOUT", "600"))
RELAY = HERE / "relay.py"
REPORT_DIR = "/var/lib/azprov-boot"
STATE_FILE = "/var/lib/azprov/state.json"
WIRESERVER = "168.63.129.16"  # guestfwd target inside the guest only; slirp relays it to 127.0.0.1
IMDS = "169.254.169.254"  # guestfwd target inside the guest only
CMDLINE = "root=/dev/vda rw console=ttyS0 quiet"
REPORT_UNIT = """[Unit]
Description=boot test only: report {unit}'s outcome, then power off
After={unit} systemd-networkd.service networking.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/local/lib/azprov-boot/guest_report.py {unit}

[Install]
WantedBy=multi-user.target
"""


# Logs every IPv4 address change from before the network starts: the hostname must be published without the
# address ever being removed (no interface bounce). Ordered before the network, it is a test-only observer.
IPMON_UNIT = """[Unit]
Description=boot test only: log IPv4 address changes
DefaultDependencies=no
After=systemd-journald.socket
Before=network-pre.target systemd-networkd.service networking.service
Wants=network-pre.target

[Service]
ExecStart=/usr/bin/ip -4 -timestamp monitor address

[Install]
WantedBy=sysinit.target
"""
# The reference for a provisioned VM's reboot: bare Python started at the same point of the same boot.
PYREF_UNIT = """[Unit]
Description=boot test only: python3 -c pass, started where azprov starts (reference for its fast path)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -c pass

[Install]
WantedBy=multi-user.target
"""
# The second network manager: ifupdown + dhclient on eth0 (net.ifnames=0 on the kernel command line).
IFUPDOWN_CMDLINE = "net.ifnames=0"
INTERFACES = """auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
"""


# cloud-init as a comparison agent: Debian's package, Azure datasource only; ds-identify needs the asset tag.
# Its network stage (cloud-init.service) has reported Ready and set and published the hostname; the report
# cannot wait for cloud-final.service, which is ordered after multi-user.target (a cycle).
CLOUD_INIT_UNIT = "cloud-init.service"
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


class BootTestError(AssertionError):
    """A scenario's expectation did not hold."""


def say(msg: str) -> None:
    print(f"[boot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- preflight ---------------------------------------------------------------------------------------------
def missing_tools() -> list[str]:
    tools = ["qemu-system-x86_64", "debootstrap", "mkfs.ext4", "debugfs", "e2fsck", "chroot", "make", "systemctl",
             "systemd-analyze"]
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and chroot need it)")
    return missing


def preflight() -> None:
    missing = missing_tools()
    if not missing:
        return
    banner = "!" * 78
    print(f"{banner}\n!! BOOT TEST CANNOT RUN: missing {', '.join(missing)}\n"
          f"!! Install them with tests/boot/ci-deps.sh (apt), or set AZPROV_SKIP_BOOT=1 to skip.\n{banner}",
          file=sys.stderr, flush=True)
    if os.environ.get("AZPROV_SKIP_BOOT") == "1":
        print("boot test SKIPPED (AZPROV_SKIP_BOOT=1)", flush=True)
        sys.exit(0)
    sys.exit(1)


def accel() -> list[str]:
    """KVM only where the CPU can really do it; /dev/kvm alone is not enough (QEMU fails without vmx/svm)."""
    flags = Path("/proc/cpuinfo").read_text()
    if re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg"]


# ---- the fabric ----------------------------------------------------------------------------------------------
class WatchedFabric(FakeFabric):
    """FakeFabric that also notes when each request arrives (a held request is logged only when it ends)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: list[tuple[float, str]] = []

    def next_answer(self, route: str) -> dict[str, Any] | None:
        self.arrivals.append((time.monotonic(), route))
        answer: dict[str, Any] | None = super().next_answer(route)
        return answer

    def arrived(self, route: str, since: float = 0.0) -> bool:
        return any(r == route and t >= since for t, r in list(self.arrivals))


def vm_id_for(qemu_uuid: str) -> str:
    """The vmId a Gen1 (BIOS) VM with this SMBIOS UUID has: what azprov derives from product_uuid."""
    vm_id = normalize(qemu_uuid, gen1=True)
    assert vm_id is not None
    return vm_id


# ---- one boot ----------------------------------------------------------------------------------------------
@dataclass
class Boot:
    name: str
    serial: Path
    started: float
    capture: Path | None = None
    started_wall: float = 0.0  # time.time() at QEMU start: the capture's time stamps use the host's wall clock
    ended: float = 0.0
    killed: bool = False
    fabric_entries: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    # The host's 1-minute load average at start and end: TCG timings move with it (2 shared cores here).
    host_load: tuple[float, float] = (0.0, 0.0)

    def ready_at(self) -> float | None:
        for e in self.fabric_entries:
            if e["route"] == "health" and e.get("status") == 200 and e.get("health_state") == "Ready":
                return float(e.get("t_answer", e["t"])) - self.started
        return None

    def first_contact(self) -> float | None:
        return min((float(e["t"]) - self.started for e in self.fabric_entries), default=None)

    def dhcp(self) -> list[pcap.Dhcp]:
        """The guest's DHCP messages, from the capture of its NIC."""
        if self.capture is None or not self.capture.exists():
            return []
        return pcap.dhcp_messages(self.capture.read_bytes())


@dataclass
class Machine:
    """One VM disk and the way to boot it."""

    disk: Path
    kernel: guest.Kernel
    work: Path
    accel: list[str]

    def boot(self, name: str, fabric: FakeFabric, vm_uuid: str, extra_cmdline: str = "",
             cut_when: Callable[[float], bool] | None = None, cut_after: float = 1.0) -> Boot:
        """Boot until the guest powers off, or power it off hard once `cut_when(start)` holds."""
        serial = self.work / f"{name}.serial.log"
        capture = self.work / f"{name}.pcap"
        relay = f"{sys.executable} {RELAY} {fabric.port}".replace(",", ",,")
        netdev = ("user,id=n0,restrict=on,ipv6=off,net=168.0.0.0/7,"
                  f"guestfwd=tcp:{WIRESERVER}:80-cmd:{relay},guestfwd=tcp:{IMDS}:80-cmd:{relay}")
        cmd = ["qemu-system-x86_64", *self.accel, "-machine", "pc", "-m", "1024", "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-uuid", vm_uuid,
               "-kernel", str(self.kernel.kernel), "-initrd", str(self.kernel.initrd),
               "-append", f"{CMDLINE} {extra_cmdline}".strip(),
               "-drive", f"file={self.disk},format=raw,if=virtio",
               "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
               "-object", f"filter-dump,id=dump0,netdev=n0,file={capture}",
               # Azure's chassis asset tag, on every boot so that all agents run with the same settings.
               "-smbios", f"type=3,asset={AZURE_ASSET_TAG}",
               "-device", "virtio-rng-pci", "-serial", f"file:{serial}"]
        first_entry = len(fabric.log)
        qemu_log = (self.work / f"{name}.qemu.log").open("w")
        started, started_wall = time.monotonic(), time.time()
        proc = subprocess.Popen(cmd, stdout=qemu_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        boot = Boot(name=name, serial=serial, started=started, capture=capture, started_wall=started_wall)
        load_start = os.getloadavg()[0]
        try:
            while proc.poll() is None:
                if time.monotonic() - started > BOOT_TIMEOUT:
                    raise BootTestError(f"{name}: no power-off within {BOOT_TIMEOUT:.0f}s (see {serial})")
                if cut_when is not None and cut_when(started):
                    time.sleep(cut_after)
                    proc.send_signal(signal.SIGKILL)  # the power cut: no shutdown, no flush by the guest
                    boot.killed = True
                    proc.wait()
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            qemu_log.close()
        boot.ended = time.monotonic()
        boot.host_load = (round(load_start, 2), round(os.getloadavg()[0], 2))
        time.sleep(0.2)  # let the fake log the last answers
        boot.fabric_entries = fabric.log[first_entry:]
        if proc.returncode not in (0, -signal.SIGKILL):
            qemu_out = (self.work / f"{name}.qemu.log").read_text()
            raise BootTestError(f"{name}: qemu exited {proc.returncode}: {qemu_out}")
        if not boot.killed:
            boot.report = self.read_json(f"{REPORT_DIR}/latest.json")
        say(f"{name}: {'power cut' if boot.killed else 'powered off'} after {boot.ended - started:.1f}s, "
            f"ready at {_fmt(boot.ready_at())}, {len(boot.fabric_entries)} fabric requests")
        return boot

    def read_file(self, path: str) -> str | None:
        """A file from the guest's disk as it is after a power cut: the journal replayed on a scratch copy."""
        scratch = self.work / "scratch.img"
        subprocess.run(["cp", "--sparse=always", str(self.disk), str(scratch)], check=True)
        try:
            subprocess.run(["e2fsck", "-fy", str(scratch)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = subprocess.run(["debugfs", "-R", f"cat {path}", str(scratch)], capture_output=True, text=True)
        finally:
            scratch.unlink()
        return out.stdout if out.returncode == 0 and out.stdout else None

    def read_json(self, path: str) -> dict[str, Any] | None:
        text = self.read_file(path)
        return json.loads(text) if text else None


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


# ---- building the images --------------------------------------------------------------------------------------
# Diagnostic variant: the same unit with its sandbox switched off by a drop-in, to measure what it costs.
UNHARDENED = """[Service]
ProtectSystem=no
PrivateTmp=no
PrivateMounts=no
DevicePolicy=auto
DeviceAllow=
CapabilityBoundingSet=
NoNewPrivileges=no
IPAddressDeny=
IPAddressAllow=
RestrictAddressFamilies=
LockPersonality=no
MemoryDenyWriteExecute=no
ProtectClock=no
ProtectControlGroups=no
ProtectKernelLogs=no
ProtectKernelModules=no
ProtectKernelTunables=no
ProtectProc=default
RestrictNamespaces=no
RestrictRealtime=no
RestrictSUIDSGID=no
RemoveIPC=no
SystemCallArchitectures=
SystemCallFilter=
"""


# Diagnostic variant: the unit ordered as early as its needs allow (local file systems and the journal), not
# after basic.target; still never before anything the network needs.
EARLY = """[Unit]
DefaultDependencies=no
After=local-fs.target systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target
"""


# Diagnostic variants: the shipped unit's CPU share for the first boot taken back (an even share with the rest
# of the boot), or replaced by niceness, to measure what each buys.
FAIR = """[Service]
CPUWeight=
"""
NICE = """[Service]
CPUWeight=
Nice=-10
"""

# Each diagnostic variant is the azprov image plus one drop-in for its unit.
DROPIN_VARIANTS = {"azprov-unhardened": UNHARDENED, "azprov-early": EARLY, "azprov-fair": FAIR,
                   "azprov-nice": NICE}


FULL_CONFIG = """# boot test: full provisioning
[configure]
steps = ["hostname", "user", "ssh_keys"]
"""


def build_images(work: Path, log: Path, with_seed: bool, dropin_variants: tuple[str, ...] = (),
                 full: bool = False, deb: bool = False, managers: bool = False,
                 cloud_init: bool = False) -> dict[str, Path]:
    """The azprov image and its variants (unhardened, full provisioning) and the seed-unit image: disks made
    from the cached base, azprov installed as users do; each variant is the same tree plus one file."""
    base = guest.build_base(CACHE, log)
    wheelhouse = work / "wheelhouse"
    guest.run(["make", "-C", str(REPO), "wheelhouse", f"WHEELHOUSE={wheelhouse}"], log=log)
    images: dict[str, Path] = {}
    rootfs = guest.prepare_rootfs(base, work / "rootfs")
    guest.run(["make", "-C", str(REPO), "install", f"DESTDIR={rootfs}", f"WHEELHOUSE={wheelhouse}"], log=log)
    guest.run(["systemctl", f"--root={rootfs}", "preset", "azprov.service"], log=log)
    verify_unit(rootfs, log)
    add_report_unit(rootfs, "azprov.service", log)
    images["azprov"] = guest.make_disk(rootfs, work / "image-azprov.img")
    for variant in dropin_variants:
        dropin = rootfs / "etc/systemd/system/azprov.service.d"
        dropin.mkdir(parents=True)
        (dropin / f"{variant}.conf").write_text(DROPIN_VARIANTS[variant])
        verify_unit(rootfs, log)
        images[variant] = guest.make_disk(rootfs, work / f"image-{variant}.img")
        shutil.rmtree(dropin)
    if full:
        conf = rootfs / "etc/azprov/azprov.toml.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "50-boot-test.toml").write_text(FULL_CONFIG)
        images["azprov-full"] = guest.make_disk(rootfs, work / "image-azprov-full.img")
        (conf / "50-boot-test.toml").unlink()
    if managers:
        images.update(manager_variants(rootfs, work, log))
    if deb:
        images["azprov-deb"] = guest.make_disk(install_deb(base, work, log), work / "image-azprov-deb.img")
        shutil.rmtree(work / "rootfs-deb")
    if with_seed:
        script, unit = seed.load()
        seed.install(rootfs_seed := guest.prepare_rootfs(base, work / "rootfs-seed"), script, unit)
        guest.run(["systemctl", f"--root={rootfs_seed}", "enable", seed.UNIT], log=log)
        add_report_unit(rootfs_seed, seed.UNIT, log)
        images["seed"] = guest.make_disk(rootfs_seed, work / "image-seed.img")
        shutil.rmtree(rootfs_seed)
    shutil.rmtree(rootfs)
    if cloud_init:
        tree = guest.prepare_rootfs(guest.build_cloud_init(CACHE, base, log), work / "rootfs-cloud-init")
        add_report_unit(tree, CLOUD_INIT_UNIT, log)
        images["cloud-init"] = guest.make_disk(tree, work / "image-cloud-init.img")
        shutil.rmtree(tree)
    return images


def install_deb(base: Path, work: Path, log: Path) -> Path:
    """An image root with the Debian package, installed as Debian image builders do: `make deb`, then apt
    inside the root, fetching the dependencies from the same mirror the base came from."""
    guest.run(["make", "-C", str(REPO), "deb"], log=log)
    deb = max((REPO / "dist").glob("azprov_*_all.deb"), key=lambda p: p.stat().st_mtime)
    rootfs = guest.prepare_rootfs(base, work / "rootfs-deb")
    shutil.copy(deb, rootfs / "tmp" / deb.name)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    guest.run(["chroot", str(rootfs), "apt-get", "update", "-q"], log=log, env=env)
    guest.run(["chroot", str(rootfs), "apt-get", "install", "-y", "-q", "--no-install-recommends",
               f"/tmp/{deb.name}"], log=log, env=env)
    (rootfs / "tmp" / deb.name).unlink()
    check((rootfs / "etc/systemd/system/multi-user.target.wants/azprov.service").is_symlink(),
          "deb: azprov.service not enabled by the package")
    verify_unit(rootfs, log)
    add_report_unit(rootfs, "azprov.service", log)
    return rootfs


def verify_unit(rootfs: Path, log: Path) -> None:
    """systemd-analyze verify in the image root. It checks the unit's Documentation= man pages with the
    host's `man`: MANPATH points that at the image, so the pages must be installed there."""
    guest.run(["systemd-analyze", "verify", f"--root={rootfs}", "azprov.service"], log=log,
              env={**os.environ, "MANPATH": str(rootfs / "usr/share/man")})


def deb_first_boot(image: Path, m: Machine) -> Scenario:
    """The Debian package (Debian's own python3-requests, -lxml, -transitions) on a first boot: Ready,
    hostname, record done."""
    vm = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-deb", vm_id=vm_id_for(vm)) as fab:
        b = m.boot("deb-first-boot", fab, vm)
    s = Scenario("first boot with the .deb installed by apt", [b])
    run_checks(s, lambda: expect_provisioned(b, "web-deb", vm_id_for(vm)))
    return s


def manager_variants(rootfs: Path, work: Path, log: Path) -> dict[str, Path]:
    """The azprov image with another network setup, for hostname publishing: ifupdown + dhclient instead of
    networkd; networkd without a system bus (dbus masked). Each change is undone after its disk is made."""
    out: dict[str, Path] = {}
    systemctl = ["systemctl", f"--root={rootfs}"]
    interfaces = rootfs / "etc/network/interfaces"
    saved = interfaces.read_text() if interfaces.exists() else None
    guest.run([*systemctl, "disable", "systemd-networkd.service", "systemd-networkd.socket"], log=log)
    guest.run([*systemctl, "enable", "networking.service"], log=log)
    interfaces.write_text(INTERFACES)
    out["azprov-dhclient"] = guest.make_disk(rootfs, work / "image-azprov-dhclient.img")
    guest.run([*systemctl, "disable", "networking.service"], log=log)
    guest.run([*systemctl, "enable", "systemd-networkd.service"], log=log)
    if saved is not None:
        interfaces.write_text(saved)
    guest.run([*systemctl, "mask", "dbus.service", "dbus.socket"], log=log)
    out["azprov-nodbus"] = guest.make_disk(rootfs, work / "image-azprov-nodbus.img")
    guest.run([*systemctl, "unmask", "dbus.service", "dbus.socket"], log=log)
    return out


def scheduling_dropin() -> str:
    """azprov's unit's CPU share (Nice=, CPUWeight=), for the `python3 -c pass` reference unit in azprov's
    images: a reboot compares the two at the same point of the boot with the same share of the CPU."""
    lines = [line for line in (REPO / "conf/azprov.service").read_text().splitlines()
             if line.split("=", 1)[0] in {"Nice", "CPUWeight", "IOWeight"}]
    return "\n[Service]\n" + "".join(f"{line}\n" for line in lines) if lines else ""


def add_report_unit(rootfs: Path, unit: str, log: Path) -> None:
    target = rootfs / "usr/local/lib/azprov-boot"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "guest_report.py", target / "guest_report.py")
    (rootfs / "etc/systemd/system/azprov-boot-report.service").write_text(REPORT_UNIT.format(unit=unit))
    (rootfs / "etc/systemd/system/azprov-boot-ipmon.service").write_text(IPMON_UNIT)
    (rootfs / "etc/systemd/system/azprov-boot-pyref.service").write_text(
        PYREF_UNIT + (scheduling_dropin() if unit == "azprov.service" else ""))
    guest.run(["systemctl", f"--root={rootfs}", "enable", "azprov-boot-report.service",
               "azprov-boot-ipmon.service", "azprov-boot-pyref.service"], log=log)


def copy_disk(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest


# ---- assertions --------------------------------------------------------------------------------------------
def check(cond: bool, what: str, detail: Any = "") -> None:
    if not cond:
        raise BootTestError(f"{what}{': ' + str(detail)[:3000] if detail != '' else ''}")


def status_of(boot: Boot) -> dict[str, Any]:
    check(boot.report is not None, f"{boot.name}: no report on the disk (see {boot.serial})")
    assert boot.report is not None
    status = boot.report.get("status") or {}
    return dict(status.get("json") or {})


def expect_provisioned(boot: Boot, hostname: str, vm_id: str) -> dict[str, Any]:
    """Ready accepted, hostname set, record done for this VM, the unit active (exited)."""
    assert boot.report is not None or status_of(boot)
    report = boot.report or {}
    props = report.get("props", {})
    status = status_of(boot)
    check(boot.ready_at() is not None, f"{boot.name}: no accepted Ready POST", _routes(boot))
    check(report.get("hostname") == hostname, f"{boot.name}: hostname", report.get("hostname"))
    check(report.get("etc_hostname") == hostname, f"{boot.name}: /etc/hostname", report.get("etc_hostname"))
    check(status.get("state") == "done", f"{boot.name}: record state", status)
    check(status.get("vm_id") == vm_id, f"{boot.name}: record vm_id", status.get("vm_id"))
    check((props.get("ActiveState"), props.get("SubState"), props.get("Result")) == ("active", "exited", "success"),
          f"{boot.name}: unit state", props)
    return status


def address_removals(boot: Boot) -> list[str]:
    """`ip monitor` lines in the guest that removed an IPv4 address (the interface bounced)."""
    lines = ((boot.report or {}).get("ipmon") or "").splitlines()
    return [line for line in lines if "Deleted" in line and " inet " in line]


_IPMON = re.compile(r"^\[\s*(\d+\.\d+)\].*?(Deleted )?\d+: (\S+)\s+inet (\S+)")


def address_gaps(ipmon: str) -> list[tuple[str, float | None]]:
    """Pure: for each IPv4 address removal in `ip monitor` journal lines, (address, seconds until the same
    address was back on the same interface, or None if it never came back)."""
    events = [(float(m.group(1)), bool(m.group(2)), m.group(3), m.group(4))
              for m in map(_IPMON.match, ipmon.splitlines()) if m]
    gaps: list[tuple[str, float | None]] = []
    for i, (t, deleted, iface, addr) in enumerate(events):
        if deleted:
            back = next((t2 for t2, d2, i2, a2 in events[i + 1:] if not d2 and (i2, a2) == (iface, addr)), None)
            gaps.append((addr, None if back is None else round(back - t, 3)))
    return gaps


def published(boot: Boot, hostname: str) -> tuple[list[pcap.Dhcp], list[pcap.Dhcp]]:
    """(all DHCP REQUESTs seen, those that carry `hostname` in option 12 or 81)."""
    requests = [m for m in boot.dhcp() if m.kind == "REQUEST"]
    return requests, [m for m in requests if hostname in m.names() or any(
        n.split(".")[0] == hostname for n in m.names())]


# systemd 252's `networkctl reconfigure` restarts the DHCP client (RELEASE, address removed, DISCOVER): there is
# no gentler way to make networkd send a new name. The check allows that one short gap, and only that.
NETWORKD_GAP_LIMIT = 1.0


def expect_published(boot: Boot, hostname: str, notes: dict[str, Any], allowed_gap: float = 0.0) -> None:
    """After provisioning, a DHCP REQUEST carried the new name, and the IPv4 address was never removed (or,
    with `allowed_gap`, came back within that many seconds, as the same address)."""
    requests, carrying = published(boot, hostname)
    notes["dhcp"] = [(round(m.t - boot.started_wall, 2), m.kind, "/".join(m.names()) or "-") for m in boot.dhcp()]
    notes["address_removed"] = address_removals(boot)
    status = status_of(boot)
    notes["publish_step"] = status.get("steps", {}).get("publish")
    check(bool(carrying), f"{boot.name}: no DHCP REQUEST carried option 12/81 = {hostname}",
          [(m.kind, m.names()) for m in requests])
    ready = boot.ready_at()
    check(ready is not None and carrying[-1].t - boot.started_wall > ready,
          f"{boot.name}: the REQUEST with the new name came before provisioning", notes["dhcp"])
    gaps = address_gaps((boot.report or {}).get("ipmon") or "")
    notes["address_gaps_s"] = gaps
    check(all(gap is not None and gap <= allowed_gap for _, gap in gaps) if allowed_gap else not gaps,
          f"{boot.name}: the IPv4 address was removed (interface bounce)", {"removed": notes["address_removed"],
                                                                          "gaps_s": gaps})


def _routes(boot: Boot) -> list[tuple[str, Any]]:
    return [(e["route"], e.get("status")) for e in boot.fabric_entries]


# ---- scenarios -----------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    boots: list[Boot]
    notes: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None


def first_boot_chain(image: Path, m: Machine) -> list[Scenario]:
    """Scenarios 1, 3, 4 and 7 on one disk: first boot, reboot, a new VM from the same disk, then
    `azprov clean` and a boot of the "captured" disk."""
    out: list[Scenario] = []
    vm1 = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-01", vm_id=vm_id_for(vm1)) as fab:
        b1 = m.boot("1-first-boot", fab, vm1)
    s1 = Scenario("first boot", [b1])
    out.append(s1)

    def first_checks() -> None:
        expect_provisioned(b1, "web-01", vm_id_for(vm1))
        expect_ssh_after(b1)
        check(len([e for e in b1.fabric_entries if e.get("health_state") == "Ready"]) == 1,
              "first boot: exactly one Ready POST", _routes(b1))
        expect_published(b1, "web-01", s1.notes, allowed_gap=NETWORKD_GAP_LIMIT)
    run_checks(s1, first_checks)

    with WatchedFabric(computer_name="web-01", vm_id=vm_id_for(vm1)) as fab:
        b3 = m.boot("3-reboot", fab, vm1)
    s3 = Scenario("reboot of a provisioned VM", [b3])
    out.append(s3)

    def reboot_checks() -> None:
        check(not b3.fabric_entries, "reboot: fabric traffic", _routes(b3))
        expect_unit_ok(b3)
        check(status_of(b3).get("state") == "done", "reboot: record", status_of(b3))
        check((b3.report or {}).get("hostname") == "web-01", "reboot: hostname kept", (b3.report or {}).get("hostname"))
    run_checks(s3, reboot_checks)

    vm2 = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-02", vm_id=vm_id_for(vm2)) as fab:
        b4 = m.boot("4-new-vm", fab, vm2)
    s4 = Scenario("new VM from the same disk (-uuid changed)", [b4])
    out.append(s4)

    def new_vm_checks() -> None:
        expect_provisioned(b4, "web-02", vm_id_for(vm2))
        expect_published(b4, "web-02", s4.notes, allowed_gap=NETWORKD_GAP_LIMIT)
    run_checks(s4, new_vm_checks)

    # 7: the image builder's workflow: `azprov clean --machine-id` on the provisioned VM, "capture", and a VM
    # from that image (same SMBIOS UUID here, so only the clean can make it provision again).
    with WatchedFabric(computer_name="web-02", vm_id=vm_id_for(vm2)) as fab:
        b7 = m.boot("7-clean", fab, vm2, extra_cmdline="azprov_boot_test.clean=1")
    with WatchedFabric(computer_name="web-03", vm_id=vm_id_for(vm2)) as fab:
        b7b = m.boot("7-after-clean", fab, vm2)
    s7 = Scenario("azprov clean --machine-id, then boot the captured disk", [b7, b7b])
    out.append(s7)

    def clean_checks() -> None:
        cleaned = (b7.report or {}).get("clean") or {}
        check(cleaned.get("exit") == 0, "clean: exit status", cleaned)
        check(cleaned.get("machine_id_after") in ("uninitialized", ""), "clean: machine-id not reset", cleaned)
        check(not b7.fabric_entries, "clean: the provisioned VM's boot talked to the fabric", _routes(b7))
        expect_provisioned(b7b, "web-03", vm_id_for(vm2))
        new_id = (b7b.report or {}).get("machine_id")
        dbus_left = cleaned.get("dbus_machine_id_after")
        check(new_id not in (None, "", "uninitialized", (b7.report or {}).get("machine_id")),
              "clean: the captured VM kept the old machine-id"
              + (" (systemd seeded it from /var/lib/dbus/machine-id, a regular file that clean left behind)"
                 if isinstance(dbus_left, dict) and dbus_left.get("file") == new_id else ""),
              {"new": new_id, "dbus_machine_id_after_clean": dbus_left})
        s7.notes["clean_output"] = cleaned.get("output")
    run_checks(s7, clean_checks)
    return out


def expect_ssh_after(boot: Boot) -> None:
    """Before=ssh.service: sshd started only once azprov had finished."""
    report = boot.report or {}
    done = int(report.get("props", {}).get("ActiveEnterTimestampMonotonic") or 0)
    ssh = report.get("ssh_props", {})
    ssh_start = int(ssh.get("InactiveExitTimestampMonotonic") or 0)
    check(done > 0 and ssh_start >= done, f"{boot.name}: ssh.service started before azprov finished",
          {"azprov_done_us": done, "ssh": ssh})


def full_provisioning(image: Path, m: Machine) -> Scenario:
    """Full provisioning: steps hostname, user, ssh_keys through the real unit and its sandbox: the admin user
    exists in the sudo group, its key is installed 0600 in a 0700 ~/.ssh it owns, sshd starts after."""
    vm = str(uuid.uuid4())
    key = ssh_key_line()
    doc = {"compute": {"name": "web-full", "vmId": vm_id_for(vm), "location": "westeurope",
                       "osProfile": {"computerName": "web-full", "adminUsername": "azureuser",
                                     "disablePasswordAuthentication": "true"},
                       "publicKeys": [{"keyData": key, "path": "/home/azureuser/.ssh/authorized_keys"}]},
           "network": {"interface": []}}
    with WatchedFabric(computer_name="web-full", vm_id=vm_id_for(vm), imds_document=doc) as fab:
        b = m.boot("6-full-provisioning", fab, vm)
    s = Scenario("full provisioning: hostname, user, ssh_keys", [b])

    def checks() -> None:
        status = expect_provisioned(b, "web-full", vm_id_for(vm))
        steps = status.get("steps", {})
        check(all(steps.get(n, {}).get("status") == "done" for n in ("hostname", "user", "ssh_keys")),
              "full: every step done", steps)
        acct = (b.report or {}).get("account")
        check(acct is not None, "full: azureuser does not exist")
        assert acct is not None
        uid = int(acct["passwd"].split(":")[2])
        check("(sudo)" in acct["id"], "full: azureuser not in sudo", acct["id"])
        check(acct["ssh_dir"] == {"mode": "0o700", "uid": uid, "gid": acct["ssh_dir"]["gid"]}, "full: ~/.ssh",
              acct["ssh_dir"])
        check((acct["authorized_keys"] or {}).get("mode") == "0o600"
              and (acct["authorized_keys"] or {}).get("uid") == uid, "full: authorized_keys", acct)
        check(key in (acct["keys"] or ""), "full: key not installed", acct["keys"])
        check(acct["shadow_locked"], "full: password not locked (disablePasswordAuthentication)", acct)
        check("azprov-azureuser" in (acct["sudoers"] or []), "full: sudoers drop-in", acct["sudoers"])
        expect_ssh_after(b)
        s.notes["steps"] = {n: v.get("result") for n, v in steps.items()}
    run_checks(s, checks)
    return s


def ssh_key_line() -> str:
    """A well-formed ssh-ed25519 public key line (random key material)."""
    name = b"ssh-ed25519"
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} boot-test"


def expect_unit_ok(boot: Boot) -> None:
    props = (boot.report or {}).get("props", {})
    check((props.get("ActiveState"), props.get("Result")) == ("active", "success"), f"{boot.name}: unit", props)


def power_cut(image: Path, m: Machine) -> Scenario:
    """Power cut: the fabric holds the health POST; the VM loses power; the next boot resumes and ends Ready."""
    return _power_cut(m, "health", "reporting", "2", "power cut during the health POST, then boot again")


def power_cut_imds(image: Path, m: Machine) -> Scenario:
    """Power cut after Ready: Ready already accepted, the fabric holds the IMDS GET; the power goes; the next boot
    finishes configuring without a second Ready."""
    return _power_cut(m, "imds", "configuring", "2b", "power cut during the IMDS GET (after Ready), then boot again")


def _power_cut(m: Machine, route: str, state_after_cut: str, tag: str, title: str) -> Scenario:
    vm = str(uuid.uuid4())
    fab = WatchedFabric(computer_name="web-cut", vm_id=vm_id_for(vm), script={route: [{"action": "hang"}]})
    with fab:
        b1 = m.boot(f"{tag}-power-cut", fab, vm, cut_when=lambda since: fab.arrived(route, since))
        on_disk = m.read_json(STATE_FILE)
        b2 = m.boot(f"{tag}-after-power-cut", fab, vm)
    s = Scenario(title, [b1, b2])

    def checks() -> None:
        check(b1.killed and fab.arrived(route), f"power cut: the {route} request never arrived")
        check(on_disk is not None, "power cut: no record on the disk after the cut")
        assert on_disk is not None
        s.notes["state_on_disk_after_cut"] = on_disk.get("state")
        check(on_disk.get("state") == state_after_cut, f"power cut: record on disk should say {state_after_cut}",
              on_disk)
        status = expect_provisioned_after_cut(b1, b2, route, vm_id_for(vm))
        s.notes["boot_attempts"] = status.get("boot_attempts")
        s.notes["history"] = [h.get("state") for h in status.get("history", [])]
    run_checks(s, checks)
    return s


def expect_provisioned_after_cut(b1: Boot, b2: Boot, held: str, vm_id: str) -> dict[str, Any]:
    readies = [b for b in (b1, b2) if b.ready_at() is not None]
    status = expect_provisioned(b2, "web-cut", vm_id) if held == "health" else {}
    if held == "health":
        check(readies == [b2], "resume: Ready should be accepted in the second boot only", _routes(b2))
    else:
        # Ready went through before the cut; the resumed boot must not report it again.
        check(readies == [b1], "resume: Ready should be accepted once, before the cut", (_routes(b1), _routes(b2)))
        check(not any(e["route"] == "health" for e in b2.fabric_entries), "resume: a second health POST",
              _routes(b2))
        report = b2.report or {}
        status = status_of(b2)
        check(report.get("hostname") == "web-cut", "resume: hostname", report.get("hostname"))
        check(status.get("state") == "done", "resume: record", status)
        expect_unit_ok(b2)
    return status


def publish_dhclient(image: Path, m: Machine) -> Scenario:
    """Hostname publishing with ifupdown + dhclient: dhclient is restarted as it was, its INIT-REBOOT REQUEST
    carries the new name, and the address stays."""
    vm = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-dhc", vm_id=vm_id_for(vm)) as fab:
        b = m.boot("8-publish-dhclient", fab, vm, extra_cmdline=IFUPDOWN_CMDLINE)
    s = Scenario("hostname published with ifupdown + dhclient", [b])

    def checks() -> None:
        expect_provisioned(b, "web-dhc", vm_id_for(vm))
        expect_published(b, "web-dhc", s.notes)
        check((s.notes.get("publish_step") or {}).get("status") == "done", "dhclient: publish step", s.notes)
    run_checks(s, checks)
    return s


def publish_no_dbus(image: Path, m: Machine) -> Scenario:
    """networkd without a system bus: networkctl cannot reach networkd, so the publish step is a recoverable
    error shown by --status, and provisioning still ends done."""
    vm = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-nobus", vm_id=vm_id_for(vm)) as fab:
        b = m.boot("9-publish-no-dbus", fab, vm)
    s = Scenario("networkd without D-Bus: publishing is best effort", [b])

    def checks() -> None:
        status = expect_provisioned(b, "web-nobus", vm_id_for(vm))
        step = status.get("steps", {}).get("publish") or {}
        s.notes["publish_step"] = step
        s.notes["recoverable_errors"] = status.get("recoverable_errors")
        s.notes["dhcp"] = [(round(x.t - b.started_wall, 2), x.kind, "/".join(x.names()) or "-") for x in b.dhcp()]
        s.notes["address_removed"] = address_removals(b)
        check(step.get("status") == "recoverable_error", "no-dbus: publish should be a recoverable error", step)
        check(any(e.get("step") == "publish" for e in status.get("recoverable_errors", [])),
              "no-dbus: --status does not list the publish error", status.get("recoverable_errors"))
        check(not s.notes["address_removed"], "no-dbus: address removed", s.notes["address_removed"])
    run_checks(s, checks)
    return s


def opt_out(image: Path, m: Machine) -> Scenario:
    """Opt-out: azprov=disabled on the kernel command line: the unit is skipped, the fabric never hears."""
    vm = str(uuid.uuid4())
    with WatchedFabric(computer_name="web-off", vm_id=vm_id_for(vm)) as fab:
        b = m.boot("5-opt-out", fab, vm, extra_cmdline="azprov=disabled")
    s = Scenario("azprov=disabled on the kernel command line", [b])

    def checks() -> None:
        props = (b.report or {}).get("props", {})
        check(b.report is not None, "opt-out: no report")
        check(props.get("ConditionResult") == "no" and props.get("ActiveState") == "inactive",
              "opt-out: unit should be skipped by its condition", props)
        check(not b.fabric_entries, "opt-out: fabric traffic", _routes(b))
        status = status_of(b)
        check(status.get("state") == "disabled" and status.get("boot_attempts") == 0
              and "azprov=disabled" in str(status.get("disabled_reason")), "opt-out: status", status)
        check((b.report or {}).get("hostname") == "template", "opt-out: hostname untouched")
    run_checks(s, checks)
    return s


def compare(images: dict[str, Path], work: Path, kernel: guest.Kernel, repeat: int,
            variants: tuple[str, ...] = ("azprov", "seed"), reboots: bool = False) -> Scenario:
    """First boots of azprov and of the article's unit (script + curl hostname), alternated on fresh
    copies of the same guest, for the timing comparison. azprov is asserted as in the first boot; the article's unit is
    measured, not asserted (it is what azprov replaces)."""
    boots: list[Boot] = []
    s = Scenario(f"first boot, {' vs '.join(variants)} (x{repeat}, alternated)", boots)
    for i in range(1, repeat + 1):
        for variant in variants:
            disk = copy_disk(images[variant], work / f"disk-compare-{variant}.img")
            m = Machine(disk=disk, kernel=kernel, work=work, accel=accel())
            vm = str(uuid.uuid4())
            name = f"{variant}-{i}"
            # The seed's unit asks /metadata/instance/compute/name?format=text, a path the fake does not
            # model: script that one answer (route "unknown") as IMDS gives it, so the seed gets its hostname.
            script = {"unknown": [{"status": 200, "body": name}]} if variant == "seed" else None
            with WatchedFabric(computer_name=name, vm_id=vm_id_for(vm), script=script) as fab:
                try:
                    b = m.boot(f"compare-{name}", fab, vm)
                except BootTestError as e:  # a comparison agent that never finishes is a result, not the end
                    if variant.startswith("azprov"):
                        raise
                    s.notes.setdefault(f"{variant}_failed", []).append(str(e)[:300])
                    disk.unlink()
                    continue
                if reboots and variant.startswith("azprov"):
                    again = m.boot(f"reboot-{name}", fab, vm)
                    s.notes.setdefault("reboot", []).append(reboot_doc(again))
            boots.append(b)
            disk.unlink()
            if variant.startswith("azprov"):
                def checks(b: Boot = b, name: str = name, vm: str = vm) -> None:
                    expect_provisioned(b, name, vm_id_for(vm))
                run_checks(s, checks)
                if s.error:
                    return s
            s.notes.setdefault(f"{variant}_hostname_set", []).append((b.report or {}).get("hostname") == name)
            s.notes.setdefault(f"{variant}_published", []).append(bool(published(b, name)[1]))
            s.notes.setdefault(f"{variant}_address_removed", []).append(len(address_removals(b)))
    for variant in variants:
        mine = [b for b in boots if b.name.rsplit("-", 1)[0] == f"compare-{variant}"]
        for key, values in (("ready", [b.ready_at() for b in mine]),
                            ("lease_to_ready", [lease_to_ready(b) for b in mine]),
                            ("unit_to_ready", [unit_to_ready(b) for b in mine])):
            got = sorted(v for v in values if v is not None)
            s.notes[f"{variant}_{key}_s"] = [round(v, 2) for v in got]
            if got:
                s.notes[f"{variant}_{key}_median_s"] = round(got[len(got) // 2], 2)
    s.ok = s.error is None
    return s


def reboot_doc(b: Boot) -> dict[str, Any]:
    """A provisioned VM's reboot: azprov's unit (start → active, guest clock) against `python3 -c pass`
    started by a unit at the same point of the same boot, and the fabric requests (must be none)."""
    report = b.report or {}

    def active_s(props: dict[str, Any]) -> float | None:
        start, done = (_usec(props.get("InactiveExitTimestampMonotonic")),
                       _usec(props.get("ActiveEnterTimestampMonotonic")))
        return None if start is None or done is None else round(done - start, 3)

    return {"boot": b.name, "fabric_requests": len(b.fabric_entries),
            "azprov_unit_s": active_s(report.get("props") or {}),
            "python_pass_unit_s": active_s(report.get("pyref_props") or {}),
            "warm": report.get("timings_warm")}


def lease_to_ready(b: Boot) -> float | None:
    """Seconds from the first DHCP ACK the guest got (the capture, host clock) to the accepted Ready."""
    ready = b.ready_at()
    acks = [m.t - b.started_wall for m in b.dhcp() if m.kind == "ACK"]
    return None if ready is None or not acks else ready - acks[0]


def unit_to_ready(b: Boot) -> float | None:
    """Seconds from the agent's unit start (guest clock) to the accepted Ready, the guest clock mapped to the
    host's through the first lease: the capture's first ACK and networkd's or dhclient's lease line. None for
    cloud-init, whose own DHCP comes first and has no lease line to map it by."""
    report = b.report or {}
    if report.get("unit") == CLOUD_INIT_UNIT:
        return None
    start = _usec((report.get("props") or {}).get("InactiveExitTimestampMonotonic"))
    timeline = guest_timeline((report.get("journal") or "") + "\n" + (report.get("network_journal") or ""))
    lease_guest = timeline.get("lease (networkd)") or timeline.get("lease (dhclient)")
    acks = [m.t - b.started_wall for m in b.dhcp() if m.kind == "ACK"]
    ready = b.ready_at()
    if start is None or lease_guest is None or not acks or ready is None:
        return None
    offset = acks[0] - lease_guest
    return ready - (start + offset)


def run_checks(s: Scenario, fn: Callable[[], Any]) -> Any:
    try:
        result = fn()
        s.ok = True
        return result
    except BootTestError as e:
        s.error = str(e)
        say(f"FAIL {s.name}: {e}")
        return None


# ---- results ---------------------------------------------------------------------------------------------------
def results_doc(scenarios: list[Scenario], accel_args: list[str], kernel: guest.Kernel) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "accel": " ".join(accel_args),
        "kernel": kernel.kernel.name,
        "cpu": _cpu_model(),
        "scenarios": [
            {"name": s.name, "ok": s.ok, "error": s.error, "notes": s.notes,
             "boots": [boot_doc(b) for b in s.boots]}
            for s in scenarios],
    }


def boot_doc(b: Boot) -> dict[str, Any]:
    report = b.report or {}
    props = report.get("props", {})
    done = _usec(props.get("ActiveEnterTimestampMonotonic")) or _usec(props.get("ExecMainExitTimestampMonotonic"))
    return {"boot": b.name, "killed": b.killed, "wall_s": round(b.ended - b.started, 2),
            "first_fabric_request_s": _round(b.first_contact()), "ready_accepted_s": _round(b.ready_at()),
            "fabric_requests": _routes(b),
            "unit_start_guest_s": _usec(props.get("InactiveExitTimestampMonotonic")),
            "unit_done_guest_s": done,
            "unit": {k: props.get(k) for k in ("ActiveState", "SubState", "Result", "ConditionResult")},
            "host_load_1min": list(b.host_load), "timings_warm": report.get("timings_warm"),
            "guest_timeline_s": guest_timeline((report.get("journal") or "") + "\n"
                                               + (report.get("network_journal") or "")),
            "dhcp": [(round(m.t - b.started_wall, 2), m.kind, "/".join(m.names()) or "-") for m in b.dhcp()],
            "address_removed": address_removals(b)}


# Journal messages that mark azprov's progress (its log lines; the unit's start/finish come from systemd).
MILESTONES = {"unit starting": "Starting ", "azprov running": "azprov: starting",
              "lease (networkd)": "DHCPv4 address", "lease (dhclient)": "bound to ",
              "hostname published": "hostname published",
              "fast path (already provisioned)": "already provisioned", "wireserver reachable": "WireServer reachable",
              "goal state received": "goal state received", "ready reported": "reported Ready",
              "hostname set": "hostname set", "unit finished": "Finished "}
_JOURNAL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s(.*)$")


def guest_timeline(journal: str) -> dict[str, float]:
    """Pure: seconds since the guest kernel started at which each milestone first shows in the journal."""
    found: dict[str, float] = {}
    for line in journal.splitlines():
        m = _JOURNAL_LINE.match(line)
        if not m:
            continue
        for name, needle in MILESTONES.items():
            if name not in found and needle in m.group(2):
                found[name] = float(m.group(1))
    return {k: round(v, 2) for k, v in sorted(found.items(), key=lambda kv: kv[1])}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _usec(v: str | None) -> float | None:
    """A unit's *TimestampMonotonic (µs since the guest kernel started), in seconds."""
    return round(int(v) / 1e6, 2) if v and v.isdigit() and int(v) > 0 else None


def _cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return m.group(1) if m else "unknown"


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Boot test ({doc['when']}, QEMU {doc['accel']}, 1 vCPU, 1 GiB, {doc['cpu']}; guest Debian 12, "
             f"kernel {doc['kernel']} booted directly). Times are seconds from QEMU start (host clock) unless "
             "marked guest (since the guest kernel started).", "",
             "| scenario | boot | result | first fabric request | Ready accepted | unit started (guest) "
             "| unit done (guest) | fabric requests | host load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in doc["scenarios"]:
        for b in s["boots"]:
            result = "ok" if s["ok"] else "FAIL"
            if b["killed"]:
                result += " (power cut)"
            unit = b["unit"]
            state = unit.get("ActiveState") or "-"
            if unit.get("ConditionResult") == "no":
                state = "skipped (condition)"
            lines.append(f"| {s['name']} | {b['boot']} | {result}, unit {state} | {_md(b['first_fabric_request_s'])} "
                         f"| {_md(b['ready_accepted_s'])} | {_md(b['unit_start_guest_s'])} "
                         f"| {_md(b['unit_done_guest_s'])} | {len(b['fabric_requests'])} "
                         f"| {b['host_load_1min'][0]:.1f}–{b['host_load_1min'][1]:.1f} |")
    for s in doc["scenarios"]:
        notes = s["notes"]
        variants = [k[: -len("_ready_s")] for k in notes if k.endswith("_ready_s")
                    and not k.endswith(("_lease_to_ready_s", "_unit_to_ready_s"))]
        if variants:
            lines += ["", "First boots alternated on fresh disks, medians (all boots in brackets), seconds:", "",
                      "| agent | QEMU start → Ready | first DHCP ACK → Ready | unit start → Ready "
                      "| new name in a later DHCP REQUEST | IPv4 address removed |", "|---|---|---|---|---|---|"]
            for v in variants:
                cells = [f"{notes.get(f'{v}_{k}_median_s', '-')} {notes.get(f'{v}_{k}_s', [])}"
                         for k in ("ready", "lease_to_ready", "unit_to_ready")]
                pub = notes.get(f"{v}_published", [])
                removed = notes.get(f"{v}_address_removed", [])
                lines.append(f"| {v} | {' | '.join(cells)} | {sum(pub)}/{len(pub)} | {removed} |")
            lines += breakdown_table(s["boots"])
    return "\n".join(lines) + "\n"


BREAKDOWN = ("unit starting", "lease (networkd)", "azprov running", "wireserver reachable", "goal state received",
             "ready reported")


def breakdown_table(boots: list[dict[str, Any]]) -> list[str]:
    """Pure: the guest-clock breakdown of each first boot that has a lease line and a Ready line, ending
    with the lease line → the `reported Ready` line (logged after the 200), and its median per agent."""
    rows, per_agent = [], {}
    for b in boots:
        t = b.get("guest_timeline_s") or {}
        lease, ready = t.get("lease (networkd)"), t.get("ready reported")
        if lease is None or ready is None or not b["boot"].startswith("compare-"):
            continue
        t = {**t, "unit starting": b.get("unit_start_guest_s") or t.get("unit starting")}
        rows.append(f"| {b['boot']} | " + " | ".join(_md2(t.get(k)) for k in BREAKDOWN) + f" | {ready - lease:.2f} |")
        per_agent.setdefault(b["boot"][len("compare-"):].rsplit("-", 1)[0], []).append(ready - lease)
    if not rows:
        return []
    medians = ", ".join(f"{agent} {sorted(v)[len(v) // 2]:.2f}" for agent, v in per_agent.items())
    return ["", f"Guest clock (seconds since the kernel started); lease line → Ready, median: {medians}.", "",
            "| boot | unit start | lease | azprov running | WireServer reachable | goal state | Ready "
            "| lease → Ready |", "|---|---|---|---|---|---|---|---|", *rows]


def _md2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _md(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# ---- main ------------------------------------------------------------------------------------------------------
SCENARIOS = ("first-boot-chain", "power-cut", "power-cut-imds", "opt-out", "full-provisioning", "deb",
             "publish-dhclient", "publish-no-dbus", "compare")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS,
                   help="run only these (default: all; 'first-boot-chain' is scenarios 1, 3 and 4)")
    p.add_argument("--no-compare", action="store_true", help="skip the timing comparison with the seed's unit")
    p.add_argument("--repeat", type=int, default=1, help="first boots per variant in the comparison")
    p.add_argument("--cloud-init", action="store_true",
                   help="add to the comparison Debian's cloud-init (Azure datasource) in a copy of the guest")
    p.add_argument("--reboots", action="store_true",
                   help="in the comparison, reboot each provisioned azprov VM (variants too) once (the fast path)")
    p.add_argument("--variant", action="append", default=[], choices=sorted(DROPIN_VARIANTS),
                   help="add to the comparison azprov with this diagnostic drop-in (see DROPIN_VARIANTS)")
    p.add_argument("--early", action="append_const", dest="variant", const="azprov-early",
                   help="the same as --variant azprov-early: ordered after local-fs.target only")
    p.add_argument("--unhardened", action="append_const", dest="variant", const="azprov-unhardened",
                   help="the same as --variant azprov-unhardened: its sandbox switched off")
    p.add_argument("--only", help="comma-separated: compare only these agents (e.g. azprov,azprov-fair)")
    p.add_argument("--record", action="store_true",
                   help="also write docs/boot-results.json and docs/boot-results.md in the repository")
    p.add_argument("--work", type=Path, help="work directory (default: a new one under the cache)")
    args = p.parse_args(argv)
    # The comparison's agents: the default set and the flags' additions, or exactly those --only names.
    agents = (("azprov", "seed") + tuple(dict.fromkeys(args.variant)) + (("cloud-init",) if args.cloud_init else ()))
    if args.only:
        agents = tuple(dict.fromkeys(a.strip() for a in args.only.split(",") if a.strip()))
        known = ("azprov", "seed", "cloud-init", *sorted(DROPIN_VARIANTS))
        unknown = [a for a in agents if a not in known]
        if unknown or not agents:
            p.error(f"--only: unknown agent {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    signal.signal(signal.SIGTERM, _terminated)  # unwind, so `finally` blocks stop QEMU and the fabric
    preflight()
    chosen = args.scenario or [s for s in SCENARIOS if not (s == "compare" and args.no_compare)]
    (CACHE / "runs").mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=CACHE / "runs"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    say(f"work dir {work}; cache {CACHE}")
    t0 = time.monotonic()
    comparing = "compare" in chosen
    images = build_images(work, log, with_seed=comparing and "seed" in agents and seed.available(),
                          dropin_variants=tuple(a for a in agents if a in DROPIN_VARIANTS) if comparing else (),
                          full="full-provisioning" in chosen, deb="deb" in chosen,
                          cloud_init=comparing and "cloud-init" in agents,
                          managers=bool({"publish-dhclient", "publish-no-dbus"} & set(chosen)))
    kernel = guest.kernel_for(CACHE / "base", CACHE / "kernel")
    say(f"images ready in {time.monotonic() - t0:.0f}s; kernel {kernel.kernel.name}; {' '.join(accel())}")
    scenarios: list[Scenario] = []
    runners: dict[str, Callable[[Path, Machine], Any]] = {
        "first-boot-chain": first_boot_chain, "power-cut": power_cut, "power-cut-imds": power_cut_imds,
        "opt-out": opt_out, "full-provisioning": full_provisioning, "publish-dhclient": publish_dhclient,
        "publish-no-dbus": publish_no_dbus, "deb": deb_first_boot}
    variant_of = {"full-provisioning": "azprov-full", "publish-dhclient": "azprov-dhclient",
                  "publish-no-dbus": "azprov-nodbus", "deb": "azprov-deb"}
    for name in chosen:
        if name == "compare" and "seed" in agents and "seed" not in images:
            say(f"{name}: skipped (no copy of the article at {seed.SEED_DIR})")
            continue
        disk = work / f"disk-{name}.img"
        try:
            if name == "compare":
                got = compare(images, work, kernel, args.repeat, agents, args.reboots)
            else:
                image = images[variant_of.get(name, "azprov")]
                machine = Machine(disk=copy_disk(image, disk), kernel=kernel, work=work, accel=accel())
                got = runners[name](disk, machine)
        except BootTestError as e:
            got = Scenario(name, [], error=str(e))
            say(f"FAIL {name}: {e}")
        except Exception as e:  # a broken harness is a failed run, with the trace kept
            got = Scenario(name, [], error=f"{type(e).__name__}: {e}")
            traceback.print_exc()
        scenarios.extend(got if isinstance(got, list) else [got])
        disk.unlink(missing_ok=True)
    doc = results_doc(scenarios, accel(), kernel)
    (work / "boot-results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (work / "boot-results.md").write_text(markdown(doc))
    if args.record:
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs/boot-results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (REPO / "docs/boot-results.md").write_text(markdown(doc))
    print(markdown(doc))
    failed = [s for s in scenarios if not s.ok]
    if not failed and os.environ.get("AZPROV_BOOT_KEEP") != "1":
        for image in work.glob("*.img"):  # ~1 GB each; the logs and results stay
            image.unlink()
    for s in scenarios:
        print(f"{'PASS' if s.ok else 'FAIL'}  {s.name}" + (f"  -- {s.error}" if s.error else ""))
    say(f"{len(scenarios) - len(failed)} passed, {len(failed)} failed in {time.monotonic() - t0:.0f}s; logs in {work}")
    return 1 if failed or not scenarios else 0


if __name__ == "__main__":
    sys.exit(main())
