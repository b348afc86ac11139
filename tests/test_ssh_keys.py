"""ssh_keys: key validation, the authorized_keys merge (pure and property-tested), and the safe install."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine.config import Config, PathsConfig
from statemachine.context import Context
from statemachine.errors import ConfigureError, RecoverableError
from states.configure import Facts, ssh_keys
from states.configure.ssh_keys import check_key, key_identity, merge_authorized_keys, resolve_path
from states.configure.user import Account
from states.configuring import Instance, PublicKey

UID = GID = 4321
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the user needs root")


def make_key(kind: str = "ssh-ed25519", body: bytes = b"\x01" * 32, comment: str = "me@host") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + body
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".strip()


KEY_A = make_key(comment="a@x")
KEY_B = make_key("ssh-rsa", b"\x00\x00\x00\x03\x01\x00\x01" + b"\x07" * 64, "b@y")


@pytest.mark.parametrize("key", [KEY_A, KEY_B, make_key(comment=""), make_key("ecdsa-sha2-nistp256")])
def test_valid_keys(key: str) -> None:
    assert check_key(key) is None


@pytest.mark.parametrize("key, problem", [
    ("", "not '<type>"),
    ("ssh-rsa", "not '<type>"),
    ("ssh-rsa AAAANOTAREALKEY== foo@bar.local", "not base64"),  # the WALA fixture's placeholder
    ("ssh-foo " + KEY_A.split()[1], "unknown key type"),
    ("ssh-rsa " + KEY_A.split()[1], "does not match"),  # an ed25519 body under an rsa label
    (KEY_A + "\nssh-rsa x", "line break"),
    ('command="/bin/sh" ' + KEY_A, "unknown key type"),  # options are never accepted from the platform
    ("somevalue", "not '<type>"),
])
def test_invalid_keys(key: str, problem: str) -> None:
    assert problem in (check_key(key) or "")


def test_identity_ignores_options_and_comment() -> None:
    kind, body = KEY_A.split()[:2]
    assert key_identity(f'no-pty,command="echo a b" {kind} {body} other') == (kind, body)
    assert key_identity(f"{kind} {body}") == (kind, body)
    assert key_identity("# " + KEY_A) is None and key_identity("") is None


def test_merge_keeps_existing_and_adds_each_key_once() -> None:
    existing = "# managed by hand\nssh-rsa OLDKEY old@box"
    merged = merge_authorized_keys(existing, [KEY_A, KEY_A, "garbage", KEY_B])
    assert merged == existing + "\n" + KEY_A + "\n" + KEY_B + "\n"
    assert merge_authorized_keys(merged, [KEY_A, KEY_B]) == merged


def test_merge_recognizes_a_key_already_present_with_options() -> None:
    existing = f'from="10.0.0.0/8" {KEY_A.split()[0]} {KEY_A.split()[1]} renamed\n'
    assert merge_authorized_keys(existing, [KEY_A]) == existing


def test_check_keys_reports_each_bad_key() -> None:
    good, bad = ssh_keys.check_keys([KEY_A, "nope", "ssh-rsa !!!"])
    assert good == (KEY_A,) and [e.supporting_data["index"] for e in bad] == [1, 2]
    assert all(isinstance(e, RecoverableError) for e in bad)


@pytest.mark.parametrize("path, rel", [
    (None, ".ssh/authorized_keys"),
    ("/home/azureuser/.ssh/authorized_keys", ".ssh/authorized_keys"),
    ("/home/azureuser/./keys/../.ssh/ak2", ".ssh/ak2"),
    ("$HOME/azureuser/.ssh/authorized_keys", ".ssh/authorized_keys"),
    ("~/.ssh/other", ".ssh/other"),
    ("path1", "path1"),
])
def test_paths_inside_home(path: str | None, rel: str) -> None:
    assert resolve_path("/home/azureuser", path) == rel


@pytest.mark.parametrize("path", ["/root/.ssh/authorized_keys", "/home/azureuser/../bob/.ssh/ak",
                                  "/home/azureuser", "/home/azureuser2/.ssh/ak", "../../etc/shadow"])
def test_paths_outside_home(path: str) -> None:
    with pytest.raises(RecoverableError, match="outside"):
        resolve_path("/home/azureuser", path)


# ---- property: merge is idempotent and loses nothing ---------------------------------------------------

keys = st.one_of(
    st.builds(make_key, st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp384"]),
              st.binary(min_size=1, max_size=40), st.from_regex(r"[a-z@.]{0,12}", fullmatch=True)),
    st.text(max_size=60),
)
existing_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(keys, st.just("# comment"), st.just("")), max_size=6).map("\n".join),
)


@settings(max_examples=examples(300), deadline=None)
@given(existing_text, st.lists(keys, max_size=6))
def test_merge_twice_equals_once_and_loses_nothing(existing: str, new: list[str]) -> None:
    once = merge_authorized_keys(existing, new)
    assert merge_authorized_keys(once, new) == once
    assert once.startswith(existing)  # every existing line, byte for byte, in place
    identities = [key_identity(line) for line in once.split("\n")]
    for key in ssh_keys.check_keys(new)[0]:
        assert key_identity(key) in identities
    appended = [i for i in identities[len(existing.split("\n")):] if i]
    assert len(appended) == len(set(appended))


# ---- I/O --------------------------------------------------------------------------------------------------

def ctx_for(root: Path) -> Context:
    return Context(Config(paths=PathsConfig(root=str(root))))


def make_home(root: Path, name: str = "azureuser") -> Account:
    home = root / "home" / name
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, UID, GID)
    (root / "etc").mkdir(exist_ok=True)
    with open(root / "etc" / "passwd", "a") as f:
        f.write(f"{name}:x:{UID}:{GID}::/home/{name}:/bin/sh\n")
    return Account(name, UID, GID, f"/home/{name}", "/bin/sh")


@needs_root
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(existing=existing_text, new=st.lists(keys, max_size=5))
def test_install_twice_equals_once(tmp_path_factory: pytest.TempPathFactory, existing: str,
                                   new: list[str]) -> None:
    root = tmp_path_factory.mktemp("root")
    account = make_home(root)
    ssh = root / "home/azureuser/.ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text(existing, encoding="utf-8", errors="surrogateescape")
    ctx = ctx_for(root)
    ssh_keys.install(ctx, account, ".ssh/authorized_keys", new)
    once = (ssh / "authorized_keys").read_bytes()
    assert ssh_keys.install(ctx, account, ".ssh/authorized_keys", new) is False
    assert (ssh / "authorized_keys").read_bytes() == once
    assert once.startswith(existing.encode("utf-8", errors="surrogateescape"))
    assert [p.name for p in ssh.iterdir()] == ["authorized_keys"]  # no temp files left


@needs_root
def test_install_creates_dir_and_file_with_owner_and_modes(tmp_path: Path) -> None:
    account = make_home(tmp_path)
    assert ssh_keys.install(ctx_for(tmp_path), account, ".ssh/authorized_keys", [KEY_A]) is True
    ssh = tmp_path / "home/azureuser/.ssh"
    st_dir, st_file = os.stat(ssh), os.stat(ssh / "authorized_keys")
    assert (st_dir.st_mode & 0o777, st_dir.st_uid, st_dir.st_gid) == (0o700, UID, GID)
    assert (st_file.st_mode & 0o777, st_file.st_uid, st_file.st_gid) == (0o600, UID, GID)
    assert (ssh / "authorized_keys").read_text() == KEY_A + "\n"


@needs_root
def test_install_tightens_an_existing_open_file(tmp_path: Path) -> None:
    account = make_home(tmp_path)
    ssh = tmp_path / "home/azureuser/.ssh"
    ssh.mkdir(mode=0o755)
    (ssh / "authorized_keys").write_text(KEY_A + "\n")
    os.chmod(ssh / "authorized_keys", 0o644)
    assert ssh_keys.install(ctx_for(tmp_path), account, ".ssh/authorized_keys", [KEY_A]) is True
    assert os.stat(ssh).st_mode & 0o777 == 0o700
    assert os.stat(ssh / "authorized_keys").st_mode & 0o777 == 0o600


@needs_root
def test_symlinked_ssh_dir_is_not_followed(tmp_path: Path) -> None:
    account = make_home(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "authorized_keys").write_text("root-only\n")
    (tmp_path / "home/azureuser/.ssh").symlink_to(victim)
    with pytest.raises(RecoverableError, match="symlink"):
        ssh_keys.install(ctx_for(tmp_path), account, ".ssh/authorized_keys", [KEY_A])
    assert (victim / "authorized_keys").read_text() == "root-only\n"
    assert sorted(p.name for p in victim.iterdir()) == ["authorized_keys"]


@needs_root
def test_symlinked_key_file_is_not_followed(tmp_path: Path) -> None:
    account = make_home(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hash:::\n")
    ssh = tmp_path / "home/azureuser/.ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").symlink_to(secret)
    with pytest.raises(RecoverableError, match="symlink"):
        ssh_keys.install(ctx_for(tmp_path), account, ".ssh/authorized_keys", [KEY_A])
    assert secret.read_text() == "root:$6$hash:::\n"
    assert (ssh / "authorized_keys").is_symlink()


def facts(*pubkeys: PublicKey, user: str = "azureuser") -> Facts:
    return Facts(Instance(admin_username=user, public_keys=pubkeys))


@needs_root
def test_step_installs_good_keys_and_reports_bad_ones(tmp_path: Path) -> None:
    make_home(tmp_path)
    ctx = ctx_for(tmp_path)
    f = facts(PublicKey(KEY_A, "/home/azureuser/.ssh/authorized_keys"), PublicKey("ssh-rsa AAAANOTAREALKEY==", None),
              PublicKey(KEY_B, "/root/.ssh/authorized_keys"))
    change = ssh_keys.plan(ctx, f)
    assert change is not None and change.before.startswith("0 key(s)") and change.after == "1 key(s)"
    with pytest.raises(RecoverableError) as info:
        ssh_keys.apply(ctx, f)
    assert info.value.supporting_data["count"] == 2
    assert (tmp_path / "home/azureuser/.ssh/authorized_keys").read_text() == KEY_A + "\n"
    assert not (tmp_path / "root").exists()


@needs_root
def test_step_is_idempotent(tmp_path: Path) -> None:
    make_home(tmp_path)
    ctx = ctx_for(tmp_path)
    f = facts(PublicKey(KEY_A, None), PublicKey(KEY_B, "/home/azureuser/.ssh/authorized_keys"))
    assert ssh_keys.apply(ctx, f) is not None
    assert ssh_keys.plan(ctx, f) is None and ssh_keys.apply(ctx, f) is None
    assert (tmp_path / "home/azureuser/.ssh/authorized_keys").read_text() == f"{KEY_A}\n{KEY_B}\n"


def test_step_without_the_user_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    f = facts(PublicKey(KEY_A, None))
    change = ssh_keys.plan(ctx_for(tmp_path), f)
    assert change is not None and change.before == "user absent"
    with pytest.raises(ConfigureError, match="user step"):
        ssh_keys.apply(ctx_for(tmp_path), f)


@needs_root
def test_one_unusable_file_does_not_block_the_others(tmp_path: Path) -> None:
    make_home(tmp_path)
    ssh = tmp_path / "home/azureuser/.ssh"
    ssh.mkdir()
    (ssh / "other_keys").symlink_to(tmp_path / "victim")
    f = facts(PublicKey(KEY_A, "~/.ssh/other_keys"), PublicKey(KEY_B, None))
    with pytest.raises(RecoverableError) as info:
        ssh_keys.apply(ctx_for(tmp_path), f)
    assert "symlink" in info.value.supporting_data["first"]
    assert (ssh / "authorized_keys").read_text() == KEY_B + "\n"
    assert not (tmp_path / "victim").exists()
