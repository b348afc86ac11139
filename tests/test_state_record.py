"""Hostile and broken state records and state directories: the VM must still report Ready.

A broken record is moved aside (`state.json.corrupt-<time>`) and provisioning starts fresh. A state
directory that refuses writes (read-only, full) costs the memory of what was done, never the Ready. The
read-only and no-space cases run in a private mount namespace (`unshare -m`) over a tiny tmpfs, so this
machine's file systems are never touched.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Env
from fakefabric import FakeFabric

from statemachine import persistence
from statemachine.persistence import Record

VALID = json.dumps(persistence.to_json(Record(state=persistence.Phase.REPORTING)))


def _plant(vm: Env, content: bytes, mode: int = 0o600) -> None:
    vm.state_dir.mkdir(mode=0o700, exist_ok=True)
    vm.state_file.write_bytes(content)
    vm.state_file.chmod(mode)


def _assert_fresh_and_ready(vm: Env, fabric: FakeFabric, out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "moved aside" in out.stdout and "action='fresh'" in out.stdout
    assert len(fabric.ready_reports()) == 1
    assert len(list(vm.state_dir.glob("state.json.corrupt-*"))) == 1
    assert json.loads(vm.state_file.read_text())["state"] == "done"


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(VALID.encode()[: len(VALID) // 2], id="truncated"),
    pytest.param(b"\x00\x01 not json \xff", id="not-json"),
    pytest.param(b'{"schema": 7, "state": "done"}', id="unknown-schema"),
    pytest.param(b'{"schema": 1, "state": "done", "attempts": "many"}', id="wrong-types"),
    pytest.param(b'{"schema": 1, "state": "done", "history": [{"at": {"x": 1}, "state": ["done"]}]}',
                 id="wrong-history-entry-types"),
    pytest.param(b'{"schema": 1, "state": "failed", "last_error": {"reason": 5, "data": [1]}}',
                 id="wrong-last-error-types"),
    pytest.param(b"[" * 100000, id="deeply-nested"),
])
def test_broken_record_is_moved_aside_and_ready_still_reported(vm: Env, fabric: FakeFabric, content: bytes) -> None:
    _plant(vm, content)
    _assert_fresh_and_ready(vm, fabric, vm.call())


def test_status_never_tracebacks_on_a_broken_record(vm: Env) -> None:
    for content in (b'{"schema": 1, "state": "done", "history": [{"at": {}, "state": [], "duration_s": "x"}]}',
                    b'{"schema": 1, "state": "failed", "last_error": {"reason": 5, "data": [1]}}',
                    b"\xff\xfe", b'{"schema": 1, "steps": {"hostname": {"status": [], "error": 3}}}'):
        _plant(vm, content)
        for args in (["--status"], ["--status", "--json"]):
            out = vm.call(*args)
            assert "Traceback" not in out.stdout + out.stderr, (content, out.stdout + out.stderr)
            assert out.returncode in (0, 1, 2)


def test_symlinked_record_is_refused_not_followed(vm: Env, fabric: FakeFabric, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text(VALID)
    before = outside.read_bytes()
    vm.state_dir.mkdir(mode=0o700)
    vm.state_file.symlink_to(outside)
    out = vm.call()
    _assert_fresh_and_ready(vm, fabric, out)
    assert "symlink" in out.stdout
    assert outside.read_bytes() == before  # neither read as ours nor written through
    assert not vm.state_file.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_record_owned_by_another_user_is_refused(vm: Env, fabric: FakeFabric) -> None:
    _plant(vm, VALID.encode())
    os.chown(vm.state_file, 12345, 12345)
    out = vm.call()
    _assert_fresh_and_ready(vm, fabric, out)
    assert "owned by another user" in out.stdout


def test_record_writable_by_others_is_refused(vm: Env, fabric: FakeFabric) -> None:
    _plant(vm, VALID.encode(), mode=0o666)
    out = vm.call()
    _assert_fresh_and_ready(vm, fabric, out)
    assert "writable by others" in out.stdout


def test_stale_temp_files_are_removed_under_the_lock(vm: Env, fabric: FakeFabric) -> None:
    vm.state_dir.mkdir(mode=0o700)
    stale = vm.state_dir / ".state.json-abcd1234.tmp"
    stale.write_text('{"schema": 1, "sta')
    unrelated = vm.state_dir / "notes.txt"
    unrelated.write_text("keep me")
    assert vm.call().returncode == 0
    assert not stale.exists() and unrelated.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_state_dir_owned_by_another_user_is_not_used_but_ready_is_reported(vm: Env, fabric: FakeFabric) -> None:
    vm.state_dir.mkdir(mode=0o700)
    planted = vm.state_dir / "state.json"
    planted.write_text(json.dumps(persistence.to_json(Record(state=persistence.Phase.DONE, vm_id=vm.vm_id))))
    os.chown(vm.state_dir, 12345, 12345)
    out = vm.call()
    assert out.returncode == 0 and len(fabric.ready_reports()) == 1, out.stdout + out.stderr
    assert "owned by another user" in out.stdout and "without a record" in out.stdout
    assert json.loads(planted.read_text())["state"] == "done"  # untouched, not trusted either


# ---- read-only and full state directories, in a private mount namespace ------------------------------------

def _can_unshare_mount() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


needs_mount_ns = pytest.mark.skipif(not _can_unshare_mount(), reason="needs root and unshare -m")


def _run_in_mount_ns(vm: Env, setup: str) -> subprocess.CompletedProcess[str]:
    """Mount a tiny tmpfs over the state dir in a private mount namespace, run `setup`, then azprov."""
    vm.state_dir.mkdir(mode=0o700, exist_ok=True)
    d = shlex.quote(str(vm.state_dir))
    script = (f"set -e; mount -t tmpfs -o size=16k,mode=0700 tmpfs {d}; cd {d}; {setup}; cd /; "
              f"exec {' '.join(shlex.quote(a) for a in vm.argv())}")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=vm.env(),
                          capture_output=True, text=True, timeout=60)


@needs_mount_ns
@pytest.mark.parametrize("setup", [
    pytest.param("mount -o remount,ro {d}", id="empty"),
    pytest.param(f"printf '%s' {shlex.quote(VALID)} > state.json; chmod 600 state.json; : > lock; "
                 "mount -o remount,ro {d}", id="mid-provisioning-record"),
    pytest.param("printf garbage > state.json; chmod 600 state.json; mount -o remount,ro {d}", id="broken-record"),
    pytest.param("chmod 1777 {d}; mount -o remount,ro {d}", id="too-open-mode-cannot-be-fixed"),
])
def test_read_only_state_dir_still_reports_ready(vm: Env, fabric: FakeFabric, setup: str) -> None:
    out = _run_in_mount_ns(vm, setup.replace("{d}", shlex.quote(str(vm.state_dir))))
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert len(fabric.ready_reports()) == 1, text
    assert out.returncode == 0, text
    assert "cannot be saved" in text or "without persistence" in text or "without a record" in text


@needs_mount_ns
@pytest.mark.parametrize("setup", [
    pytest.param("dd if=/dev/zero of=fill bs=1k count=64 2>/dev/null || true", id="full-empty-dir"),
    pytest.param(f"printf '%s' {shlex.quote(VALID)} > state.json; chmod 600 state.json; : > lock; "
                 "dd if=/dev/zero of=fill bs=1k count=64 2>/dev/null || true", id="full-with-record"),
])
def test_no_space_left_still_reports_ready(vm: Env, fabric: FakeFabric, setup: str) -> None:
    out = _run_in_mount_ns(vm, setup)
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert len(fabric.ready_reports()) == 1, text
    assert out.returncode == 0, text
    assert "cannot be saved" in text or "without persistence" in text
