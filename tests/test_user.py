"""The `user` step, only ever against a temporary root (`useradd --root <tmp>`), never this machine's users."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from statemachine.config import Config, PathsConfig, UserConfig
from statemachine.context import Context
from statemachine.errors import ConfigureError, RecoverableError
from states.configure import Facts, user
from states.configuring import Instance
from states.media import OvfEnv

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "usermod", "chpasswd")),
    reason="needs root and the shadow tools (useradd/usermod/chpasswd --root) to work on a temporary root")

HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow")


@pytest.fixture(autouse=True)
def host_accounts_untouched() -> object:
    before = {p: Path(p).read_bytes() for p in HOST_FILES if os.path.exists(p)}
    yield None
    assert {p: Path(p).read_bytes() for p in before} == before


def Media(password: str | None = None, disable_ssh_password_auth: bool | None = None) -> OvfEnv:  # noqa: N802
    return OvfEnv(hostname="web-01", username="azureuser", password=password,
                  disable_ssh_password_auth=disable_ssh_password_auth)


def make_root(tmp: Path, admin_group: str | None = "sudo", sudo: bool = True,
              extra_passwd: str = "", extra_shadow: str = "") -> Path:
    etc = tmp / "etc"
    etc.mkdir(parents=True)
    groups = "root:x:0:\n" + (f"{admin_group}:x:27:\n" if admin_group else "") + "docker:x:998:\n"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
                                + extra_passwd)
    (etc / "group").write_text(groups)
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000::::::\n" + extra_shadow)
    (etc / "gshadow").write_text("".join(f"{line.split(':')[0]}:*::\n" for line in groups.splitlines()))
    os.chmod(etc / "shadow", 0o600)
    os.chmod(etc / "gshadow", 0o600)
    (etc / "login.defs").write_text("UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\n"
                                    "USERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\n")
    (tmp / "home").mkdir()
    if sudo:
        (etc / "sudoers.d").mkdir(mode=0o750)
    return tmp


def ctx_for(root: Path, groups: tuple[str, ...] = ("sudo",)) -> Context:
    return Context(Config(paths=PathsConfig(root=str(root)), user=UserConfig(groups=groups)))


def facts(name: str | None = "azureuser", disable: bool | None = True, media: Media | None = None) -> Facts:
    return Facts(Instance(admin_username=name, disable_password_authentication=disable), media)


def passwd_line(root: Path, name: str) -> str | None:
    return next((line for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith(name + ":")), None)


def shadow_of(root: Path, name: str) -> str:
    return user.shadow_field((root / "etc/shadow").read_text(), name) or ""


@pytest.mark.parametrize("name", ["azureuser", "a", "_svc", "x" * 32, "ops-1"])
def test_valid_names(name: str) -> None:
    assert user.validate_name(name) is None


@pytest.mark.parametrize("name", ["root", "daemon", "bin", "sys", "nobody", "Admin", "1abc", "x" * 33,
                                  "a b", "a:b", "-x", "", "a$(id)", "ünï"])
def test_invalid_names(name: str) -> None:
    assert user.validate_name(name) is not None


def test_resolve_groups() -> None:
    assert user.resolve_groups(["sudo", "docker"], ["wheel", "docker"]) == (["wheel", "docker"], [])
    assert user.resolve_groups(["sudo"], ["sudo", "wheel"]) == (["sudo"], [])
    assert user.resolve_groups(["sudo", "video"], ["root"]) == ([], ["sudo", "video"])


def test_creates_user_groups_sudoers_and_is_idempotent(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ctx = ctx_for(root, ("sudo", "docker"))
    change = user.plan(ctx, facts())
    assert change is not None and change.before == "azureuser absent" and "create" in change.after
    assert passwd_line(root, "azureuser") is None  # plan changes nothing
    assert user.apply(ctx, facts()) is not None
    account = user.lookup(ctx, "azureuser")
    assert account is not None and account.home == "/home/azureuser" and account.uid >= 1000
    assert (root / "home/azureuser").is_dir()
    groups = user.parse_groups((root / "etc/group").read_text())
    assert "azureuser" in groups["sudo"][1] and "azureuser" in groups["docker"][1]
    dropin = root / "etc/sudoers.d/azprov-azureuser"
    assert dropin.read_text() == "azureuser ALL=(ALL) NOPASSWD:ALL\n"
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o440
    assert shadow_of(root, "azureuser").startswith("!")
    # The second run (a reboot) finds nothing to do.
    assert user.plan(ctx, facts()) is None and user.apply(ctx, facts()) is None
    assert [p.name for p in (root / "etc/sudoers.d").iterdir()] == ["azprov-azureuser"]


def test_wheel_when_the_image_has_no_sudo_group(tmp_path: Path) -> None:
    root = make_root(tmp_path, admin_group="wheel")
    user.apply(ctx_for(root), facts())
    assert "azureuser" in user.parse_groups((root / "etc/group").read_text())["wheel"][1]


def test_missing_group_is_recoverable_and_the_user_still_exists(tmp_path: Path) -> None:
    root = make_root(tmp_path, admin_group=None)
    with pytest.raises(RecoverableError) as info:
        user.apply(ctx_for(root, ("sudo", "docker")), facts())
    assert info.value.supporting_data["groups"] == "sudo"
    assert passwd_line(root, "azureuser") is not None


def test_existing_user_is_added_to_groups_and_locked(tmp_path: Path) -> None:
    root = make_root(tmp_path, extra_passwd="azureuser:x:1000:1000::/home/azureuser:/bin/sh\n",
                     extra_shadow="azureuser:$6$salt$hash:19000::::::\n")
    with open(root / "etc/group", "a") as f:
        f.write("azureuser:x:1000:\n")
    ctx = ctx_for(root)
    change = user.plan(ctx, facts(disable=True))
    assert change is not None and change.before == "azureuser present"
    assert "lock password" in change.after and "create" not in change.after
    user.apply(ctx, facts(disable=True))
    assert shadow_of(root, "azureuser") == "!$6$salt$hash"
    assert "azureuser" in user.parse_groups((root / "etc/group").read_text())["sudo"][1]
    assert user.plan(ctx, facts(disable=True)) is None


def test_password_from_media_goes_through_stdin_and_is_never_logged(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = make_root(tmp_path)
    secret = "Sup3r-s3cret:with colon"
    f = facts(name=None, disable=None, media=Media(password=secret, disable_ssh_password_auth=False))
    ctx = ctx_for(root)
    with caplog.at_level(logging.DEBUG):
        change = user.apply(ctx, f)
    assert change is not None and secret not in repr(change)
    assert "set password from provisioning media" in change.after and change.why == "provisioning media UserName"
    assert secret not in caplog.text
    assert shadow_of(root, "azureuser").startswith("$6$")
    # A password exists now, so sudo asks for it.
    assert (root / "etc/sudoers.d/azprov-azureuser").read_text() == "azureuser ALL=(ALL) ALL\n"
    assert user.plan(ctx, f) is None  # not set again on the next boot


def test_overlong_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    secret = "p" * 73
    f = facts(disable=False, media=Media(password=secret))
    with pytest.raises(RecoverableError) as info:
        user.apply(ctx_for(root), f)
    assert secret not in str(info.value) and secret not in repr(info.value.as_dict())
    assert passwd_line(root, "azureuser") is not None
    assert shadow_of(root, "azureuser").startswith("!")
    assert "NOPASSWD" in (root / "etc/sudoers.d/azprov-azureuser").read_text()


@pytest.mark.parametrize("name", ["root", "Bad Name"])
def test_unacceptable_names_fail(tmp_path: Path, name: str) -> None:
    root = make_root(tmp_path)
    with pytest.raises(ConfigureError, match="not acceptable"):
        user.apply(ctx_for(root), facts(name))


def test_system_account_is_never_taken_over(tmp_path: Path) -> None:
    root = make_root(tmp_path, extra_passwd="svc:x:120:120::/var/lib/svc:/usr/sbin/nologin\n")
    with pytest.raises(ConfigureError, match="system account"):
        user.apply(ctx_for(root), facts("svc"))


def test_no_username_anywhere_is_recoverable(tmp_path: Path) -> None:
    with pytest.raises(RecoverableError):
        user.plan(ctx_for(make_root(tmp_path)), facts(None))


def test_without_sudo_installed_no_dropin(tmp_path: Path) -> None:
    root = make_root(tmp_path, sudo=False)
    user.apply(ctx_for(root), facts())
    assert not (root / "etc/sudoers.d").exists()


def _fake_visudo(tmp: Path, rc: int) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    script = bindir / "visudo"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp}/visudo.args\nexit {rc}\n")
    script.chmod(0o755)
    return bindir


@pytest.mark.parametrize("rc", [0, 1])
def test_dropin_is_checked_with_visudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rc: int) -> None:
    root = make_root(tmp_path / "root")
    monkeypatch.setenv("PATH", f"{_fake_visudo(tmp_path, rc)}:{os.environ['PATH']}")
    if rc == 0:
        user.apply(ctx_for(root), facts())
        assert (root / "etc/sudoers.d/azprov-azureuser").exists()
    else:
        with pytest.raises(ConfigureError, match="visudo"):
            user.apply(ctx_for(root), facts())
        assert list((root / "etc/sudoers.d").iterdir()) == []  # nothing half-installed
    args = (tmp_path / "visudo.args").read_text().split()
    assert args[0] == "-cf" and args[1].startswith(str(root / "etc/sudoers.d/.azprov-"))
