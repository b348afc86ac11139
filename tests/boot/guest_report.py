#!/usr/bin/python3
"""Test-only, runs inside the guest after the provisioning unit: collects what the boot test asserts on.

Installed only into the boot test's image (never by `make install`), by azprov-boot-report.service, which
is ordered after the unit under test. Writes one JSON document to /var/lib/azprov-boot/report-<n>.json,
prints it to the serial console between markers, syncs, and powers the VM off so QEMU exits.
Usage: guest_report.py UNIT (azprov.service, or the article's azure-provisioning.service).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

AZPROV = "/usr/lib/azprov/bin/azprov"
OUT_DIR = "/var/lib/azprov-boot"
PROPS = ("ActiveState", "SubState", "Result", "ExecMainStatus", "ConditionResult", "UnitFileState",
         "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic",
         "ExecMainExitTimestampMonotonic")


def sh(*cmd: str) -> tuple[int, str]:
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return out.returncode, out.stdout


def unit_props(unit: str) -> dict[str, str]:
    _, text = sh("systemctl", "show", unit, *[f"--property={p}" for p in PROPS])
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def azprov_status() -> dict[str, Any] | None:
    if not os.path.exists(AZPROV):
        return None
    code, text = sh(AZPROV, "--status", "--json")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {"unparsed": text}
    return {"exit": code, "json": doc}


def timed(*cmd: str) -> float:
    """Wall seconds of a command, run warm after boot: separates interpreter cost from boot contention."""
    start = time.monotonic()
    sh(*cmd)
    return round(time.monotonic() - start, 3)


def provisioned() -> bool:
    try:
        with open("/var/lib/azprov/state.json") as f:
            return json.load(f).get("state") == "done"
    except (OSError, ValueError, AttributeError):
        return False


def timings() -> dict[str, Any]:
    # The venv's interpreter (make install), or the system's (the Debian package).
    venv_python = next(p for p in ("/usr/lib/azprov/bin/python", "/usr/bin/python3") if os.path.exists(p))
    out: dict[str, Any] = {"python3 -c pass": timed("/usr/bin/python3", "-c", "pass")}
    if os.path.exists(AZPROV):
        if provisioned():  # then it is the fast path: no fabric request, nothing written
            out["azprov (as the unit runs it)"] = timed(AZPROV)
        # The floor of a later boot: the standard-library modules any run imports before it can tell there
        # is nothing to do (its arguments, its TOML config, logging, paths, the JSON record).
        out["import argparse, json, logging, pathlib, tomllib"] = timed(
            venv_python, "-c", "import argparse, json, logging, pathlib, tomllib")
        out["azprov --version"] = timed(AZPROV, "--version")
        out["azprov --status --json"] = timed(AZPROV, "--status", "--json")
        out["import requests, lxml.etree, transitions"] = timed(
            venv_python, "-c", "import requests, lxml.etree, transitions")
        _, text = sh(venv_python, "-X", "importtime", AZPROV, "--status", "--json")
        rows = [line.split("|") for line in text.splitlines() if line.startswith("import time:")]
        top = sorted(((int(r[1]), r[2].strip()) for r in rows[1:] if r[1].strip().isdigit()), reverse=True)
        out["importtime_top_cumulative_us"] = top[:12]
    return out


def settle_network(limit: float = 20.0) -> float:
    """Wait until a global IPv4 address is present again and the DHCP exchange a publish started has had
    time to finish, so the capture and `ip monitor` see it before the power-off. Seconds waited."""
    start = time.monotonic()
    time.sleep(2.0)
    while time.monotonic() - start < limit:
        if "inet " in sh("ip", "-4", "-o", "addr", "show", "scope", "global")[1]:
            break
        time.sleep(0.2)
    return round(time.monotonic() - start, 2)


def bytecode(root: str = "/usr/lib/azprov/lib") -> dict[str, Any]:
    """Whether modules come byte-compiled: a .py without its current .pyc is compiled at every start,
    since the unit (ProtectSystem=) cannot write __pycache__ under /usr."""
    tag = sys.implementation.cache_tag
    missing, total = [], 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(".py") or "__pycache__" in top:
                continue
            total += 1
            pyc = os.path.join(top, "__pycache__", f"{name[:-3]}.{tag}.pyc")
            if not os.path.exists(pyc) or os.path.getmtime(pyc) < os.path.getmtime(os.path.join(top, name)):
                missing.append(os.path.join(top, name))
    return {"py_files": total, "without_current_pyc": len(missing), "examples": missing[:5]}


def dbus_machine_id() -> dict[str, str] | None:
    """systemd seeds a first boot's machine id from this file when it is a regular file (not a symlink)."""
    path = "/var/lib/dbus/machine-id"
    if os.path.islink(path):
        return {"symlink": os.readlink(path)}
    try:
        with open(path) as f:
            return {"file": f.read().strip()}
    except OSError:
        return None


def boot_profile() -> dict[str, Any]:
    """Where the boot's CPU and time went: CPU seconds by unit and the whole journal, so a run can be read
    without the VM. (`systemd-analyze critical-chain` and `blame` answer only once the boot has finished,
    and this report is part of the boot: the journal carries the same start and finish times.)"""
    _, units = sh("systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "--type=service")
    names = [line.split()[0] for line in units.splitlines() if line.split()]
    cpu: list[tuple[float, str]] = []
    if names:
        _, shown = sh("systemctl", "show", "--property=Id,CPUUsageNSec", *names)
        for block in shown.split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if fields.get("CPUUsageNSec", "").isdigit():
                cpu.append((round(int(fields["CPUUsageNSec"]) / 1e9, 3), fields.get("Id", "?")))
    with open("/proc/stat") as f:
        total = next(line for line in f if line.startswith("cpu "))
    return {"cpu_s_by_unit": sorted(cpu, reverse=True)[:25], "proc_stat_cpu": total.strip(),
            "journal_all": sh("journalctl", "-b", "-o", "short-monotonic", "--no-pager")[1][-60000:]}


def account(user: str) -> dict[str, Any] | None:
    """What the user and ssh_keys steps left behind (None where absent)."""
    def stat(path: str) -> dict[str, Any] | None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return {"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "gid": st.st_gid}

    code, passwd = sh("getent", "passwd", user)
    if code != 0:
        return None
    home = passwd.strip().split(":")[5]
    keys_path = os.path.join(home, ".ssh", "authorized_keys")
    try:
        with open(keys_path) as f:
            keys = f.read()
    except OSError:
        keys = None
    return {"passwd": passwd.strip(), "id": sh("id", user)[1].strip(), "home": stat(home),
            "ssh_dir": stat(os.path.join(home, ".ssh")), "authorized_keys": stat(keys_path), "keys": keys,
            "shadow_locked": sh("passwd", "-S", user)[1].split()[1:2] == ["L"],
            "sudoers": sorted(os.listdir("/etc/sudoers.d")) if os.path.isdir("/etc/sudoers.d") else None}


def main() -> None:
    unit = sys.argv[1]
    with open("/proc/cmdline") as f:
        cmdline = f.read().strip()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    settled = settle_network()
    report = {
        "unit": unit,
        "network_settle_s": settled,
        "ipmon": sh("journalctl", "-b", "-u", "azprov-boot-ipmon", "-o", "short-monotonic", "--no-pager")[1],
        "network_journal": sh("journalctl", "-b", "-u", "systemd-networkd", "-u", "networking", "-u",
                              "azprov-dhclient-*", "-o", "short-monotonic", "--no-pager")[1],
        "addresses": sh("ip", "-4", "-o", "addr", "show")[1],
        "cmdline": cmdline,
        "uptime_at_report": uptime,
        "hostname": socket.gethostname(),
        "etc_hostname": open("/etc/hostname").read().strip(),
        "machine_id": open("/etc/machine-id").read().strip(),
        "dbus_machine_id": dbus_machine_id(),
        "product_uuid": open("/sys/class/dmi/id/product_uuid").read().strip(),
        "props": unit_props(unit),
        "ssh_props": unit_props("ssh.service"),
        "pyref_props": unit_props("azprov-boot-pyref.service"),
        "account": account("azureuser"),
        "status": azprov_status(),
        "journal": sh("journalctl", "-b", "-u", unit, "-o", "short-monotonic", "--no-pager")[1],
        "timings_warm": timings(),
        "bytecode": bytecode() if unit == "azprov.service" else None,
        "profile": boot_profile(),
        "bytecode_stdlib": bytecode(f"/usr/lib/python3.{sys.version_info[1]}"),
    }
    if "azprov_boot_test.clean=1" in cmdline.split():
        # The image builder's step before capture (README "Baking it into an image").
        code, text = sh(AZPROV, "clean", "--machine-id")
        report["clean"] = {"exit": code, "output": text, "machine_id_after": open("/etc/machine-id").read().strip(),
                           "dbus_machine_id_after": dbus_machine_id(),
                           "state_dir_after": sorted(os.listdir("/var/lib/azprov"))}
    os.makedirs(OUT_DIR, mode=0o700, exist_ok=True)
    n = len([f for f in os.listdir(OUT_DIR) if f.startswith("report-")]) + 1
    text = json.dumps(report, indent=1)
    for path in (f"{OUT_DIR}/report-{n}.json", f"{OUT_DIR}/latest.json"):
        with open(path, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    with open("/dev/ttyS0", "w") as tty:
        tty.write(f"\n=== AZPROV-BOOT-REPORT {n} BEGIN ===\n{text}\n=== AZPROV-BOOT-REPORT END ===\n")
    os.sync()
    subprocess.run(["systemctl", "poweroff", "--no-block"])


if __name__ == "__main__":
    main()
