"""Shared fixtures: the loopback fake fabric, configs pointing at it under tmp_path, and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
# `<clone>/../shared` in CI; worktrees under /work/wt/<name> find it one level further up;
# AZPROV_FIXTURES points anywhere else.
FIXTURES = Path(os.environ.get("AZPROV_FIXTURES") or next(
    (p for p in (REPO.parent / "shared" / "fixtures" / "azure", REPO.parent.parent / "shared" / "fixtures" / "azure")
     if p.is_dir()), REPO.parent / "shared" / "fixtures" / "azure"))
sys.path.insert(0, str(REPO / "tests"))

from fakefabric import FakeFabric  # noqa: E402


@pytest.fixture
def fabric() -> Iterator[FakeFabric]:
    with FakeFabric() as fake:
        yield fake


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Env:
    """A hermetic VM for one test: its own root, state dir, SMBIOS uuid and config file."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.state_dir = tmp / "state"
        self.uuid_path = tmp / "product_uuid"
        self.config_path = tmp / "azprov.toml"
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (tmp / "efi").mkdir(exist_ok=True)  # a Gen2 (UEFI) VM: vm id = product_uuid lower-cased
        self.vm_uuid = str(uuid.uuid4())
        self.uuid_path.write_text(self.vm_uuid.upper() + "\n")
        self.settings: dict[str, dict[str, Any]] = {
            "fabric": {"wireserver_url": url, "imds_url": url, "network_timeout": 5.0,
                       "wireserver_timeout": 5.0, "imds_timeout": 5.0, "request_timeout": 2.0},
            "paths": {"state_dir": str(self.state_dir), "root": str(self.root)},
            "identity": {"product_uuid_path": str(self.uuid_path), "efi_path": str(tmp / "efi")},
            "hostname": {"method": "file"},
        }
        self.write()

    def set(self, section: str, **values: Any) -> Env:
        self.settings.setdefault(section, {}).update(values)
        return self.write()

    def write(self) -> Env:
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self

    def new_vm(self) -> str:
        """Simulate a new VM made from the same disk: another SMBIOS uuid."""
        self.vm_uuid = str(uuid.uuid4())
        self.uuid_path.write_text(self.vm_uuid.upper() + "\n")
        return self.vm_uuid

    @property
    def vm_id(self) -> str:
        return self.vm_uuid.lower()

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def hostname(self) -> str | None:
        path = self.root / "etc" / "hostname"
        return path.read_text().strip() if path.exists() else None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "AZPROV_FAILPOINT")}
        env["AZPROV_CONFIG_DIR"] = str(self.tmp / "no-system-config")
        env["PYTHONPATH"] = str(REPO)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "statemachine.cli", "--config", str(self.config_path), *args]

    def run(self, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env={**self.env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env={**self.env(), **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO)


@pytest.fixture
def vm(tmp_path: Path, fabric: FakeFabric, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("AZPROV_CONFIG_DIR", str(tmp_path / "no-system-config"))
    return Env(tmp_path, fabric.url)


@pytest.fixture
def make_vm(tmp_path: Path) -> Callable[[str], Env]:
    return lambda url: Env(tmp_path, url)
