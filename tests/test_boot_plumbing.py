"""The boot test's host-side plumbing and the shipped unit, without booting anything: the apt mirror lookup,
the vmlinux extraction, the guestfwd relay, the article loader, the results table, the unit's
directives, and (slow) `make install` into a staging root."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "boot"))

import guest  # noqa: E402
import seed  # noqa: E402

ELF = b"\x7fELF" + bytes(range(256)) * 64


def test_mirror_from_deb822_skips_security_and_comments(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "# a comment\nTypes: deb-src deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert guest.host_mirror(d, tmp_path / "none.list") == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    lst = tmp_path / "sources.list"
    lst.write_text("# deb http://old.example/debian bookworm main\n"
                   "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")
    assert guest.host_mirror(tmp_path / "d", lst) == "http://mirror.example/debian"


def test_no_mirror_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(guest.GuestError, match="no apt source"):
        guest.host_mirror(tmp_path / "d", tmp_path / "none")


@pytest.mark.parametrize("pack", [lambda b: lzma.compress(b, format=lzma.FORMAT_XZ), gzip.compress])
def test_vmlinux_found_inside_a_bzimage(pack: object) -> None:
    # A decoy that starts like gzip but is not, then the real payload: the extractor must skip the decoy.
    bzimage = b"MZ" + b"\0" * 500 + b"\x1f\x8b\x08garbage" + pack(ELF) + b"\0" * 100  # type: ignore[operator]
    assert guest.extract_vmlinux(bzimage) == ELF


def test_no_vmlinux_in_random_bytes() -> None:
    assert guest.extract_vmlinux(os.urandom(4096)) is None


def test_seed_document_blocks(tmp_path: Path) -> None:
    doc = tmp_path / "seed.txt"
    doc.write_text("intro\n```bash\n$ az group create\n```\n```python\nimport sys\nprint(1)\n```\n"
                   "```bash\n[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n```\n")
    script, unit = seed.load(doc)
    assert script == "import sys\nprint(1)\n"
    assert unit.startswith("[Unit]\n") and "ExecStart=/bin/true" in unit


def _echo_server() -> tuple[socket.socket, list[bytes]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            got.append(data)
            conn.sendall(b"pong:" + data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, got


def test_relay_copies_both_ways_to_loopback_only() -> None:
    srv, got = _echo_server()
    guest_side, relay_side = socket.socketpair()
    with srv, guest_side:
        proc = subprocess.Popen([sys.executable, str(REPO / "tests/boot/relay.py"), str(srv.getsockname()[1])],
                                stdin=relay_side, stdout=relay_side, stderr=relay_side)
        relay_side.close()
        guest_side.sendall(b"ping\n")
        guest_side.settimeout(10)
        answer = b""
        while chunk := guest_side.recv(100):
            answer += chunk
        assert proc.wait(timeout=10) == 0
    assert got == [b"ping\n"] and answer == b"pong:ping\n"


@pytest.mark.parametrize("arg", ["0", "70000", "x", "-1"])
def test_relay_refuses_a_bad_port(arg: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tests/boot/relay.py"), arg], capture_output=True, timeout=10)
    assert proc.returncode == 2 and proc.stdout == b"" and proc.stderr == b""


def _unit(path: Path) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_unit_directives_from_the_issue() -> None:
    u = _unit(REPO / "conf/azprov.service")
    assert u["Type"] == ["oneshot"] and u["RemainAfterExit"] == ["yes"]
    assert u["ExecStart"] == ["/usr/lib/azprov/bin/azprov"]
    assert set(u["Before"][0].split()) == {"ssh.service", "sshd.service", "systemd-user-sessions.service"}
    assert "After" not in u and "Wants" not in u and "Requires" not in u  # no network-online.target
    assert u["StateDirectory"] == ["azprov"] and u["StateDirectoryMode"] == ["0700"]
    assert int(u["TimeoutStartSec"][0]) > 300 + 2 * 1200 + 300
    assert u["StandardOutput"] == ["journal+console"]
    assert u["ConditionPathExists"] == ["!/etc/azprov/disabled"]
    assert u["ConditionKernelCommandLine"] == ["!azprov=disabled"]
    assert "ProtectHostname" not in u and "ProtectHome" not in u
    assert u["ProtectSystem"] == ["yes"]
    assert "sethostname" in u["SystemCallFilter"][0].split()
    assert "CAP_SYS_ADMIN" in u["CapabilityBoundingSet"][0].split()


def test_preset_enables_the_unit() -> None:
    lines = [x for x in (REPO / "conf/90-azprov.preset").read_text().splitlines() if x and not x.startswith("#")]
    assert lines == ["enable azprov.service"]


def test_results_table_has_a_row_per_boot() -> None:
    import run_boot

    doc = {"when": "t", "accel": "-accel tcg", "kernel": "vmlinux", "cpu": "cpu", "scenarios": [
        {"name": "first boot", "ok": True, "error": None, "notes": {"azprov_ready_s": [30.0], "seed_ready_s": [26.0]},
         "boots": [{"boot": "b1", "killed": False, "first_fabric_request_s": 29.5, "ready_accepted_s": 30.0,
                    "unit_start_guest_s": 20.0, "unit_done_guest_s": 31.0, "fabric_requests": [["goalstate", 200]],
                    "unit": {"ActiveState": "active"}, "host_load_1min": [1.0, 2.0]},
                   {"boot": "b2", "killed": True, "first_fabric_request_s": None, "ready_accepted_s": None,
                    "unit_start_guest_s": None, "unit_done_guest_s": None, "fabric_requests": [],
                    "unit": {"ConditionResult": "no"}, "host_load_1min": [1.0, 1.0]}]}]}
    text = run_boot.markdown(doc)
    rows = [x for x in text.splitlines() if x.startswith("| first boot")]
    assert len(rows) == 2
    assert "| 30.0 |" in rows[0] and "power cut" in rows[1] and "skipped (condition)" in rows[1]
    assert "| azprov | - [30.0] |" in text and "| seed | - [26.0] |" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_into_a_staging_root(tmp_path: Path) -> None:
    """make wheelhouse, then make install DESTDIR=... PREFIX=/opt/azprov (relocate mode): the unit follows
    PREFIX, scripts name the final path, an administrator's config is kept."""
    wheelhouse = tmp_path / "wh"
    env = {**os.environ, "WHEELHOUSE": str(wheelhouse)}
    subprocess.run(["make", "-s", "-C", str(REPO), "wheelhouse", f"PYTHON={sys.executable}"], check=True, env=env)
    dest = tmp_path / "root"
    (dest / "etc/azprov").mkdir(parents=True)
    (dest / "etc/azprov/azprov.toml").write_text("# mine\n")
    from test_install import target_python  # the target has this Python, as make install checks
    target_python(dest)
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={dest}", "PREFIX=/opt/azprov",
                    f"PYTHON={sys.executable}"], check=True, env={**env, "AZPROV_INSTALL_MODE": "relocate"})
    unit = (dest / "usr/lib/systemd/system/azprov.service").read_text()
    assert "ExecStart=/opt/azprov/lib/azprov/bin/azprov\n" in unit
    script = dest / "opt/azprov/lib/azprov/bin/azprov"
    assert script.read_text().splitlines()[0].startswith("#!/opt/azprov/lib/azprov/bin/python")
    assert "import re" not in script.read_text()  # the plain launcher, not pip's wrapper (bench P4)
    staged_python = dest / "opt/azprov/lib/azprov/bin/python"
    version = subprocess.run([str(staged_python), str(script), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("azprov "), version.stdout + version.stderr
    assert os.readlink(dest / "opt/azprov/bin/azprov") == "/opt/azprov/lib/azprov/bin/azprov"
    assert str(dest) not in (dest / "opt/azprov/lib/azprov/pyvenv.cfg").read_text()
    assert (dest / "etc/azprov/azprov.toml").read_text() == "# mine\n"
    assert (dest / "usr/lib/systemd/system-preset/90-azprov.preset").exists()
    assert list((dest / "opt/azprov/lib/azprov").glob("lib/python3*/site-packages/statemachine/cli.py"))


def test_only_names_unknown_agents_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import run_boot

    with pytest.raises(SystemExit) as info:
        run_boot.main(["--scenario", "compare", "--only", "azprov,azprov-fast"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--only: unknown agent azprov-fast" in err and "azprov-unhardened" in err
