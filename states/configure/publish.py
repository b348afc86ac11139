"""The `publish` configure step: make the DHCP server learn the new hostname, so Azure DNS registers it.

Azure-provided DNS registers the name the VM sends in DHCP (option 12). The image's DHCP client sent the
image's name at boot, before the hostname step ran, so the new name must go out in a new DHCP REQUEST. azprov
runs no DHCP client of its own: it asks the network manager that holds the lease of the interface that
leads to the WireServer (also the VM's DHCP server), using that manager's own mechanism, without taking
the interface down:

- systemd-networkd: `networkctl reconfigure IFACE` (`renew` would resend the old name: networkd reads the
  hostname only when it configures the link). In systemd 252 this restarts the link's DHCP client: RELEASE,
  the address gone for ~0.1-0.2 s, then DISCOVER/REQUEST with the new name. networkd offers nothing
  gentler; it happens before ssh.service starts, while nothing but azprov uses the network. networkctl
  talks D-Bus; without a system bus it fails, and the step records a recoverable error: the name then
  reaches DHCP at the next boot.
- NetworkManager: `nmcli device modify IFACE ipv4.dhcp-hostname NAME`, a runtime reapply of the active
  connection (the saved profile is not changed) that restarts DHCP on the configured address.
- ifupdown + dhclient: the running dhclient cannot be told to renew, so it is replaced by the same command
  line, started by systemd as a transient unit (outside azprov's sandbox): its INIT-REBOOT REQUEST asks for
  the address it holds and sends the new name (Debian's dhclient.conf sends `gethostname()`).

Runs right after the hostname step when `hostname.publish` is on, and only against the running system:
with `paths.root` other than "/" it touches nothing. Every command has a timeout; a failure is recoverable
(the VM works, only its DNS name waits) and shows in `azprov --status`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from statemachine.config import Config
from statemachine.context import Context
from statemachine.errors import RecoverableError
from statemachine.log import fields
from states.configure import Change, Facts

log = logging.getLogger(__name__)

STEP = "publish"
WIRESERVER = "168.63.129.16"
COMMAND_TIMEOUT = 15.0  # seconds per command; a step runs at most two
DBUS_SOCKET = "run/dbus/system_bus_socket"
SYSTEMD_SOCKET = "run/systemd/private"  # systemd-run's way to PID 1 without D-Bus (root only)

Runner = Callable[[Sequence[str], float], "Result"]


class Result(NamedTuple):
    returncode: int
    output: str


class Link(NamedTuple):
    """What the running system shows about the interface that leads to the WireServer (the DHCP server)."""

    iface: str
    manager: str | None  # "networkd", "networkmanager", "dhclient" or None (nothing known manages it)
    dhclient_argv: tuple[str, ...] = ()  # the running dhclient's command line (dhclient only)
    dhclient_pid: int | None = None


# ---- pure: which steps run, which interface, which manager, which commands --------------------------------

def ordered(config: Config, steps: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The configured steps with `publish` right after `hostname` (when `hostname.publish` is on and
    `paths.root` is "/"), unless the hostname step found the name already in place (the boot's own lease
    carried it) or found no valid one."""
    names = tuple(config.configure.steps)
    # A relocated root is an image or a test, never the system whose network we would touch.
    if not config.hostname.publish or "hostname" not in names or config.paths.root != "/":
        return names
    if steps.get("hostname", {}).get("status") in ("unchanged", "recoverable_error") and STEP not in steps:
        return names
    at = names.index("hostname") + 1
    return names[:at] + (STEP,) + names[at:]


def route_interface(route_table: str, destination: str = WIRESERVER) -> str | None:
    """The interface /proc/net/route's text sends `destination` through (longest prefix, then lowest
    metric), or None. The WireServer is also the VM's DHCP server, so its route names the primary NIC, with
    or without a default route."""
    target = int(ipaddress.IPv4Address(destination))
    best: tuple[int, int, str] | None = None
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        try:
            dest, metric, mask = (_le32(cols[1]), int(cols[6]), _le32(cols[7]))
        except (IndexError, ValueError):
            continue
        if target & mask != dest & mask:
            continue
        key = (bin(mask).count("1"), -metric, cols[0])
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def _le32(hex_text: str) -> int:
    """/proc/net/route's addresses: 8 hex digits of the address in host (little-endian) byte order."""
    if len(hex_text) != 8:
        raise ValueError(hex_text)
    return int.from_bytes(bytes.fromhex(hex_text), "little")


def networkd_manages(link_state: str) -> bool:
    """/run/systemd/netif/links/<ifindex>: networkd has a .network file for the link and configures it."""
    keys = dict(line.split("=", 1) for line in link_state.splitlines() if "=" in line)
    return bool(keys.get("NETWORK_FILE")) and keys.get("ADMIN_STATE") in ("configuring", "configured")


def nm_manages(device_state: str) -> bool:
    """/run/NetworkManager/devices/<ifindex>: NetworkManager's own record of a device it manages."""
    return any(line.replace(" ", "") == "managed=true" for line in device_state.splitlines())


def commands(link: Link, name: str) -> list[list[str]]:
    """The commands that make `link`'s manager send `name` in a new DHCP REQUEST."""
    if link.manager == "networkd":
        return [["networkctl", "reconfigure", link.iface]]
    if link.manager == "networkmanager":
        return [["nmcli", "--wait", str(int(COMMAND_TIMEOUT)), "device", "modify", link.iface,
                 "ipv4.dhcp-hostname", name]]
    if link.manager == "dhclient":
        return [["systemd-run", f"--unit=azprov-dhclient-{link.iface}", "--collect", "--service-type=forking",
                 f"--description=DHCP client for {link.iface} (restarted by azprov to publish the hostname)",
                 "--", *link.dhclient_argv]]
    return []


def usable_dhclient(argv: Sequence[str], iface: str) -> bool:
    """A daemonising dhclient for exactly this interface, which we can start again as it was."""
    return (bool(argv) and os.path.basename(argv[0]) == "dhclient" and argv[-1] == iface
            and not {"-r", "-x", "-d", "-1"} & set(argv))


# ---- I/O: reading the running system, running the commands -------------------------------------------------

def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def probe(sysroot: Path = Path("/"), destination: str = WIRESERVER) -> Link | None:
    """The interface routing to `destination` and its manager, read from /proc, /sys and /run under
    `sysroot`."""
    iface = route_interface(_read(sysroot / "proc/net/route") or "", destination)
    if iface is None:
        return None
    index = (_read(sysroot / "sys/class/net" / iface / "ifindex") or "").strip()
    if index.isdigit():
        if networkd_manages(_read(sysroot / "run/systemd/netif/links" / index) or ""):
            return Link(iface, "networkd")
        if nm_manages(_read(sysroot / "run/NetworkManager/devices" / index) or ""):
            return Link(iface, "networkmanager")
    pid_text = (_read(sysroot / f"run/dhclient.{iface}.pid") or "").strip()
    if pid_text.isdigit():
        raw = _read(sysroot / "proc" / pid_text / "cmdline") or ""
        argv = tuple(a for a in raw.split("\0") if a)
        if usable_dhclient(argv, iface):
            return Link(iface, "dhclient", argv, int(pid_text))
    return Link(iface, None)


def run_command(cmd: Sequence[str], timeout: float) -> Result:
    """Run one command in its own process group, which is killed whole when the timeout passes (a child
    left holding the output pipe would otherwise keep the step waiting)."""
    try:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except OSError as e:
        return Result(127, e.strerror or str(e))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Result(124, f"no answer within {timeout:g} s")
    return Result(proc.returncode, out)


def publish(name: str, sysroot: Path = Path("/"), run: Runner = run_command,
            which: Callable[[str], str | None] = shutil.which,
            kill: Callable[[int, int], None] = os.kill, destination: str = WIRESERVER) -> Link:
    """Ask the manager of the interface towards `destination` to send `name`; RecoverableError when it
    cannot."""
    link = probe(sysroot, destination)
    if link is None:
        raise RecoverableError("hostname not published: no IPv4 route to the WireServer", address=destination)
    if link.manager is None:
        raise RecoverableError("hostname not published: no known network manager holds the lease",
                               iface=link.iface, known="systemd-networkd, NetworkManager, ifupdown+dhclient")
    cmds = commands(link, name)
    missing = [c[0] for c in cmds if which(c[0]) is None]
    if missing:
        raise RecoverableError("hostname not published: command not found", manager=link.manager,
                               command=missing[0])
    if link.manager == "dhclient":
        _stop_dhclient(link, sysroot, kill)
    for cmd in cmds:
        result = run(cmd, COMMAND_TIMEOUT)
        if result.returncode != 0:
            data: dict[str, Any] = {"manager": link.manager, "iface": link.iface, "command": " ".join(cmd[:3]),
                                    "exit": result.returncode, "output": result.output.strip()[-300:]}
            if link.manager in ("networkd", "networkmanager") and not (sysroot / DBUS_SOCKET).exists():
                data["dbus"] = "no system bus: the name reaches DHCP at the next boot"
            raise RecoverableError("hostname not published: the network manager refused", **data)
    return link


def _stop_dhclient(link: Link, sysroot: Path, kill: Callable[[int, int], None]) -> None:
    """SIGKILL, not SIGTERM: a dhclient that exits cleanly may release its lease and run its STOP hook,
    which removes the address. Refused unless systemd can start the replacement."""
    if not (sysroot / SYSTEMD_SOCKET).exists():
        raise RecoverableError("hostname not published: systemd is not reachable to restart dhclient",
                               iface=link.iface)
    assert link.dhclient_pid is not None
    try:
        kill(link.dhclient_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own: the replacement starts all the same
    except OSError as e:
        raise RecoverableError("hostname not published: dhclient could not be stopped", iface=link.iface,
                               pid=link.dhclient_pid, error=e.strerror) from e


# ---- the step -----------------------------------------------------------------------------------------------

def wireserver_address(config: Config) -> str:
    """The configured WireServer's address when it is an IPv4 literal (it always is on Azure)."""
    host = urlsplit(config.fabric.wireserver_url).hostname or ""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return WIRESERVER


def _name(facts: Facts) -> str:
    from states.configure.hostname import choose
    return choose(facts)[0]


def plan(ctx: Context, facts: Facts) -> Change | None:
    if not ctx.config.hostname.publish or ctx.config.paths.root != "/":
        return None
    link = probe(destination=wireserver_address(ctx.config))
    manager = link.manager if link is not None and link.manager else "no known network manager"
    return Change(STEP, "DHCP hostname of the boot's lease", _name(facts), f"a new DHCP REQUEST via {manager}")


def apply(ctx: Context, facts: Facts) -> Change | None:
    if not ctx.config.hostname.publish:
        return None
    name = _name(facts)
    if ctx.config.paths.root != "/":
        log.info("hostname not published: paths.root is not /", extra=fields(root=ctx.config.paths.root))
        return None
    link = publish(name, destination=wireserver_address(ctx.config))
    log.info("hostname published", extra=fields(hostname=name, manager=link.manager, iface=link.iface))
    return Change(STEP, "DHCP hostname of the boot's lease", name, f"a new DHCP REQUEST via {link.manager}")
