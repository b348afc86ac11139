"""Image-build safety: with `paths.root` elsewhere, `hostname.method = "auto"` writes only the root's
/etc/hostname and never changes the running system's hostname; explicit methods do what they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from statemachine.config import Config, HostnameConfig, PathsConfig
from statemachine.context import Context
from states.configure import Facts, hostname
from states.configuring import Instance


@pytest.fixture
def system_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and never perform) every way of changing the running system's hostname; pretend systemd
    and hostnamectl are there, so "auto" would pick hostnamectl if it looked at the running system."""
    calls: list[str] = []
    monkeypatch.setattr(hostname.socket, "sethostname", lambda name: calls.append(f"sethostname {name}"))
    monkeypatch.setattr(hostname, "_hostnamectl", lambda name: calls.append(f"hostnamectl set-hostname {name}"))
    monkeypatch.setattr(hostname.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(hostname.os.path, "isdir", lambda path: True)
    return calls


def ctx_for(root: Path, method: str) -> Context:
    return Context(Config(paths=PathsConfig(state_dir=str(root / "state"), root=str(root)),
                          hostname=HostnameConfig(method=method)))


def test_auto_with_a_relocated_root_only_writes_the_file(tmp_path: Path, system_calls: list[str]) -> None:
    change = hostname.apply(ctx_for(tmp_path, "auto"), Facts(Instance(computer_name="image-01")))
    assert change is not None and change.after == "image-01"
    assert (tmp_path / "etc" / "hostname").read_text() == "image-01\n"
    assert system_calls == []


@pytest.mark.parametrize("method, expected", [("sethostname", ["sethostname web-01"]),
                                              ("hostnamectl", ["hostnamectl set-hostname web-01"]),
                                              ("file", [])])
def test_explicit_methods_do_what_they_say(tmp_path: Path, system_calls: list[str], method: str,
                                           expected: list[str]) -> None:
    hostname.apply(ctx_for(tmp_path, method), Facts(Instance(computer_name="web-01")))
    assert system_calls == expected
    assert (tmp_path / "etc" / "hostname").exists() == (method != "hostnamectl")


def test_auto_on_the_real_root_still_uses_the_running_system(monkeypatch: pytest.MonkeyPatch,
                                                             system_calls: list[str]) -> None:
    # Only the decision is exercised: nothing is applied to "/".
    assert hostname._resolve_method(Context(Config(hostname=HostnameConfig(method="auto")))) == "hostnamectl"
    monkeypatch.setattr(hostname.shutil, "which", lambda name: None)
    assert hostname._resolve_method(Context(Config(hostname=HostnameConfig(method="auto")))) == "sethostname"
    assert system_calls == []
