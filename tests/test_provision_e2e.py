"""Full provisioning through the CLI against the fake fabric, under a temporary root: hostname, user and
SSH keys, crash-resume between steps, --dry-run, the media, and `clean`. A process for the first run, each
crash, --dry-run, `clean` and the exit codes 2 and 75; in-process (`Env.call`) for the rest."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, Env
from fakefabric import FakeFabric
from test_ssh_keys import KEY_A, KEY_B
from test_user import make_root, shadow_of

from states.configure import user

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "usermod", "chpasswd")),
    reason="needs root and the shadow tools (useradd/usermod/chpasswd --root) to work on a temporary root")

STEPS = ["hostname", "user", "ssh_keys"]


def imds(fabric: FakeFabric, keys: list[dict[str, str]], **profile: str) -> None:
    doc = fabric.imds()
    doc["compute"]["publicKeys"] = keys
    doc["compute"]["osProfile"].update(profile)
    fabric.imds_document = doc


@pytest.fixture
def full(vm: Env, fabric: FakeFabric) -> Env:
    shutil.rmtree(vm.root / "etc")
    make_root(vm.root)
    vm.set("configure", steps=STEPS)
    imds(fabric, [{"keyData": KEY_A, "path": "/home/azureuser/.ssh/authorized_keys"}, {"keyData": KEY_B}])
    return vm


def status(vm: Env) -> dict[str, Any]:
    out = vm.call("--status", "--json")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_full_provisioning_then_reboot_does_nothing(full: Env, fabric: FakeFabric) -> None:
    out = full.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert full.hostname() == "web-01"
    account = user.parse_passwd((full.root / "etc/passwd").read_text(), "azureuser")
    assert account is not None
    keys = full.root / "home/azureuser/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert (keys.stat().st_uid, stat.S_IMODE(keys.stat().st_mode)) == (account.uid, 0o600)
    assert (full.root / "etc/sudoers.d/azprov-azureuser").exists()
    st = status(full)
    assert st["state"] == "done" and set(st["steps"]) == set(STEPS)
    assert all(s["status"] == "done" and s["at"] and "duration_s" in s for s in st["steps"].values())
    text = full.call("--status").stdout
    assert "configure steps:" in text and "ssh_keys" in text and "user: azureuser absent" in text
    before = len(fabric.log)
    assert full.call().returncode == 0 and len(fabric.log) == before


def test_crash_after_user_resumes_at_ssh_keys(full: Env, fabric: FakeFabric) -> None:
    out = full.run(env={"AZPROV_FAILPOINT": "configure.ssh_keys.before:kill"})
    assert out.returncode != 0
    st = status(full)
    assert st["state"] == "configuring" and set(st["steps"]) == {"hostname", "user"}
    user_at = st["steps"]["user"]["at"]
    assert not (full.root / "home/azureuser/.ssh").exists()
    out = full.call()
    assert out.returncode == 0, out.stdout + out.stderr
    st = status(full)
    assert st["steps"]["user"]["at"] == user_at  # not redone
    assert st["steps"]["ssh_keys"]["status"] == "done"
    assert (full.root / "home/azureuser/.ssh/authorized_keys").read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert len(fabric.ready_reports()) == 1


def test_crash_inside_a_step_reruns_it_idempotently(full: Env) -> None:
    out = full.run(env={"AZPROV_FAILPOINT": "configure.user.after:kill"})
    assert out.returncode != 0 and "user" not in status(full)["steps"]
    assert full.call().returncode == 0
    st = status(full)
    assert st["steps"]["user"]["status"] == "unchanged"  # the account existed already: nothing redone
    assert [line.split(":")[0] for line in (full.root / "etc/passwd").read_text().splitlines()].count(
        "azureuser") == 1


def test_bad_key_is_a_recoverable_error(full: Env, fabric: FakeFabric) -> None:
    imds(fabric, [{"keyData": KEY_A}, {"keyData": "ssh-rsa AAAANOTAREALKEY== foo@bar"}])
    assert full.call().returncode == 0
    assert full.run("--status").returncode == 2  # exit 2 (recoverable errors) as a process
    st = status(full)
    assert st["steps"]["ssh_keys"]["status"] == "recoverable_error"
    assert st["recoverable_errors"][0]["step"] == "ssh_keys"


def test_invalid_username_fails_and_names_the_step(full: Env, fabric: FakeFabric) -> None:
    imds(fabric, [], adminUsername="root")
    assert full.call().returncode == 1
    st = status(full)
    assert st["state"] == "failed" and st["last_error"]["data"]["step"] == "user"
    assert fabric.failure_reports()


def test_dry_run_changes_nothing_and_posts_nothing(full: Env, fabric: FakeFabric) -> None:
    passwd = (full.root / "etc/passwd").read_bytes()
    out = full.run("--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dry run: nothing changed")
    assert "hostname: unset → web-01 (IMDS osProfile.computerName)" in lines
    assert any(line.startswith("user: azureuser absent → azureuser: create") for line in lines)
    assert any(line.startswith("ssh_keys: user absent → +2 key(s)") for line in lines)
    assert [e["route"] for e in fabric.log] == ["goalstate", "imds"]  # reads only
    assert not full.state_file.exists() and full.hostname() is None
    assert (full.root / "etc/passwd").read_bytes() == passwd
    data = json.loads(full.call("--dry-run", "--json").stdout)
    assert [s["step"] for s in data["steps"]] == STEPS
    assert data["steps"][0] == {"step": "hostname", "action": "change", "before": "unset", "after": "web-01",
                                "why": "IMDS osProfile.computerName"}


@pytest.mark.slow  # a second dry run through the same CLI path
def test_dry_run_after_provisioning_has_nothing_to_do(full: Env) -> None:
    assert full.run().returncode == 0
    out = full.run("--dry-run")
    assert out.stdout.splitlines()[1:] == ["hostname: nothing to do", "user: nothing to do",
                                           "ssh_keys: nothing to do"]


def test_media_password_custom_data_and_clean(full: Env, fabric: FakeFabric, tmp_path: Path) -> None:
    media_dir = tmp_path / "cd"
    media_dir.mkdir()
    # The fixture with password logins allowed, so the media's password is set.
    text = (FIXTURES / "cloudinit_ovf_env_full.xml").read_text()
    (media_dir / "ovf-env.xml").write_text(text.replace(">true</ns1:DisableSsh", ">false</ns1:DisableSsh"))
    # IMDS without the user: the media supplies it.
    doc = fabric.imds()
    doc["compute"]["osProfile"] = {"computerName": "web-01"}
    fabric.imds_document = doc
    full.set("media", enabled=True, device=str(media_dir))
    out = full.call()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test-password" not in out.stdout + out.stderr
    assert "test-password" not in full.state_file.read_text()
    assert shadow_of(full.root, "test-user").startswith("$6$")
    assert (full.root / "etc/sudoers.d/azprov-test-user").read_text() == "test-user ALL=(ALL) ALL\n"
    custom = full.state_dir / "custom_data"
    assert custom.read_bytes() == b"foo" and stat.S_IMODE(custom.stat().st_mode) == 0o600
    st = status(full)
    # The media's keys are placeholders ("" and "somevalue"): skipped as recoverable errors.
    assert st["steps"]["ssh_keys"]["status"] == "recoverable_error"
    (full.root / "var/log").mkdir(parents=True)
    (full.root / "var/log/azprov.log").write_text("x")
    (full.root / "etc/machine-id").write_text("abc\n")
    out = full.run("clean", "--logs", "--machine-id")
    assert out.returncode == 0, out.stderr
    assert f"removed {full.state_file}" in out.stdout and f"removed {custom}" in out.stdout
    assert (full.root / "etc/machine-id").read_text() == "uninitialized\n"
    assert not (full.root / "var/log/azprov.log").exists()
    assert full.call("clean").stdout.strip() == "nothing to remove"
    assert full.call("--status", "--json").returncode == 0 and status(full)["state"] == "not_started"


def test_clean_refuses_while_a_run_holds_the_lock(full: Env) -> None:
    from statemachine.lock import RunLock

    assert full.call().returncode == 0
    held = RunLock(full.state_dir / "lock")
    assert held.try_acquire()
    try:
        out = full.run("clean")
        assert out.returncode == 75 and "holds the lock" in out.stderr
        assert full.state_file.exists()
    finally:
        held.release()


def test_usage_errors(full: Env) -> None:
    assert full.call("--logs").returncode == 64
    assert full.call("clean", "--status").returncode == 64
    assert full.call("--dry-run", "--status").returncode == 64


def test_broken_media_is_recorded_once_and_imds_still_provisions(full: Env, tmp_path: Path) -> None:
    media_dir = tmp_path / "cd"
    media_dir.mkdir()
    shutil.copy(FIXTURES / "cloudinit_ovf_env_invalid_duplicate_hostname.xml", media_dir / "ovf-env.xml")
    full.set("media", enabled=True, device=str(media_dir))
    out = full.run(env={"AZPROV_FAILPOINT": "configure.ssh_keys.before:kill"})
    assert out.returncode != 0
    assert full.call().returncode == 0  # the resumed run reads the media again: still recorded once
    st = status(full)
    assert st["state"] == "done" and all(s["status"] == "done" for s in st["steps"].values())
    assert [(e["step"], e["reason"]) for e in st["recoverable_errors"]] == [
        ("media", "ovf-env.xml has a duplicate element")]
    assert full.call("--status").returncode == 2


def test_enabled_media_without_a_cd_is_fine(full: Env, tmp_path: Path) -> None:
    full.set("media", enabled=True, device=str(tmp_path / "no-sr0"))
    assert full.call().returncode == 0
    assert status(full)["recoverable_errors"] == [] and not (full.state_dir / "custom_data").exists()


def test_dry_run_with_media_saves_no_custom_data(full: Env, tmp_path: Path) -> None:
    media_dir = tmp_path / "cd"
    media_dir.mkdir()
    shutil.copy(FIXTURES / "cloudinit_ovf_env_full.xml", media_dir / "ovf-env.xml")
    full.set("media", enabled=True, device=str(media_dir))
    out = full.call("--dry-run")
    assert "media: read" in out.stdout
    assert f"custom_data: would save 3 bytes to {full.state_dir / 'custom_data'} (mode 0600)" in out.stdout
    assert "test-password" not in out.stdout + out.stderr
    assert not (full.state_dir / "custom_data").exists()
