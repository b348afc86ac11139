"""Shared fixtures: the loopback fake fabric, configs pointing at it under tmp_path, and CLI runners."""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import hypothesis
import pytest

REPO = Path(__file__).resolve().parent.parent
# Test data copied from peer projects (see fixtures/azure/PROVENANCE.md); always read from the checkout.
FIXTURES = REPO / "tests" / "fixtures" / "azure"
sys.path.insert(0, str(REPO / "tests"))

# Defence in depth for every process the tests start: unless a test says otherwise, the "system" config
# layer points the fabric at a closed loopback port and the state under a temporary directory, so no test
# can reach the real Azure addresses or write /var/lib/azprov by falling back to the built-in defaults.
_GUARD = Path(tempfile.mkdtemp(prefix="azprov-test-guard-"))
atexit.register(shutil.rmtree, _GUARD, ignore_errors=True)  # a test run leaves /tmp as it found it
(_GUARD / "azprov.toml").write_text(
    '[fabric]\nwireserver_url = "http://127.0.0.1:9"\nimds_url = "http://127.0.0.1:9"\nnetwork_timeout = 2.0\n'
    f'[paths]\nstate_dir = "{_GUARD / "state"}"\nroot = "{_GUARD / "root"}"\n'
    f'[identity]\nproduct_uuid_path = "{_GUARD / "product_uuid"}"\n[hostname]\nmethod = "file"\n')
os.environ["AZPROV_CONFIG_DIR"] = str(_GUARD)

from fakefabric import FakeFabric  # noqa: E402


class FakeClock:
    """Monotonic time that moves only when slept through: retry and runner tests run in no real time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def _fresh_loggers() -> Iterator[None]:
    """An in-process run configures azprov's loggers (own handler, no propagation); undo that after each
    test, so a later test's caplog still sees their records whatever ran before it."""
    yield
    for name in ("azprov", "statemachine", "states"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


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
        # The same settings as the system layer too: should a test's --config file lack a key (or be
        # wrongly accepted), azprov still falls back to the fake fabric and the temporary root, never to
        # the built-in Azure endpoints or /var/lib.
        system = self.tmp / "system-config"
        system.mkdir(exist_ok=True)
        (system / "azprov.toml").write_text("\n".join(lines) + "\n")
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
        env["AZPROV_CONFIG_DIR"] = str(self.tmp / "system-config")
        env["PYTHONPATH"] = str(REPO)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "statemachine.cli", "--config", str(self.config_path), *args]

    def run(self, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env={**self.env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)

    def call(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """What `run` does, in this process: `cli.main` with this VM's environment, its system config layer
        and its own stdout and stderr. For tests about what a run decides rather than about the process
        (signals, crashes, the console script, the interpreter's exit), at a fraction of a process's start."""
        return call_cli(self.argv(*args)[3:], {**self.env(), **(env or {})})

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env={**self.env(), **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO)


def call_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`azprov ARGV` in-process under `env` (which replaces os.environ for the call), as a CompletedProcess.
    The system layer is read from env's AZPROV_CONFIG_DIR, which the config module otherwise binds at import.
    Signal handlers, the environment and the loggers are restored afterwards."""
    from statemachine import cli, config

    system_dir = Path(env.get("AZPROV_CONFIG_DIR", str(_GUARD)))
    system_layers = config.system_layers
    saved_env = dict(os.environ)
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    config.system_layers = lambda _dir=system_dir: system_layers(system_dir)  # type: ignore[misc]
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: --help, --version, usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
            for name in ("azprov", "statemachine", "states"):
                for handler in logging.getLogger(name).handlers:
                    handler.flush()
    finally:
        config.system_layers = system_layers
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        for name in ("azprov", "statemachine", "states"):
            logging.getLogger(name).handlers.clear()
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture
def vm(tmp_path: Path, fabric: FakeFabric, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("AZPROV_CONFIG_DIR", str(tmp_path / "system-config"))
    return Env(tmp_path, fabric.url)


@pytest.fixture
def make_vm(tmp_path: Path) -> Callable[[str], Env]:
    return lambda url: Env(tmp_path, url)


# ---- property tests: fewer examples in `make test`, all of them in `make test-slow` ----------------------------

# `make test` tries each property with a quarter of the examples it asks for (at least 20, or all of them when
# fewer are asked): the quick suite still shows a broken property at once, most of the time. `make test-slow`
# sets AZPROV_PROPERTY_EXAMPLES=full and runs every property test again with all its examples. Tests that
# name a count wrap it in `examples()`; the rest take the profile's.
FULL_EXAMPLES = os.environ.get("AZPROV_PROPERTY_EXAMPLES") == "full"


def quick_examples(asked: int) -> int:
    return max(min(asked, 20), asked // 4)


def examples(asked: int) -> int:
    return asked if FULL_EXAMPLES else quick_examples(asked)


hypothesis.settings.register_profile("azprov", max_examples=examples(hypothesis.settings.default.max_examples))
hypothesis.settings.load_profile("azprov")
