from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statemachine.config import Config, HostnameConfig, PathsConfig
from statemachine.context import Context
from statemachine.errors import RecoverableError
from states.configure import Facts, hostname
from states.configuring import Instance

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["web-01", "a", "x" * 63, "host.example.com", "AzTux-Test-0001", "1abc"])
def test_valid_hostnames(name: str) -> None:
    assert hostname.validate(name) is None


@pytest.mark.parametrize("name", ["", "x" * 64, "-x", "x-", "x_y", "a;reboot", "$(id)", "héllo", "web.",
                                  "a..b", "a b", "web\n01", "vmss_1"])
def test_invalid_hostnames(name: str) -> None:
    assert hostname.validate(name) is not None


def facts(computer_name: str | None, name: str | None = None) -> Facts:
    return Facts(Instance(computer_name=computer_name, name=name))


def test_computer_name_wins_over_resource_name() -> None:
    assert hostname.choose(facts("web-01", "vmss_1")) == ("web-01", "IMDS osProfile.computerName")


def test_resource_name_only_when_computer_name_unusable() -> None:
    assert hostname.choose(facts("bad_name", "web-02"))[0] == "web-02"
    assert hostname.choose(facts(None, "web-03"))[0] == "web-03"


def test_no_valid_name_is_a_recoverable_error() -> None:
    with pytest.raises(RecoverableError) as info:
        hostname.choose(facts("$(id)", "vmss_1"))
    assert "osProfile.computerName" in info.value.supporting_data


def ctx_for(root: Path, method: str = "file") -> Context:
    return Context(Config(paths=PathsConfig(state_dir=str(root / "state"), root=str(root)),
                          hostname=HostnameConfig(method=method)))


def test_file_method_writes_only_under_the_root(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    change = hostname.apply(ctx, facts("web-01"))
    assert change is not None and change.before == "unset" and change.after == "web-01"
    assert (tmp_path / "etc" / "hostname").read_text() == "web-01\n"
    assert hostname.apply(ctx, facts("web-01")) is None  # idempotent: nothing to do the second time
    assert hostname.plan(ctx, facts("web-02")) is not None


@pytest.mark.skipif(not shutil.which("unshare"), reason="unshare(1) is not installed")
def test_sethostname_inside_a_private_uts_namespace(tmp_path: Path) -> None:
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --uts is not permitted here: {probe.stderr.decode().strip()}")
    code = (
        "import socket, sys\n"
        "from pathlib import Path\n"
        "from statemachine.config import Config, HostnameConfig, PathsConfig\n"
        "from statemachine.context import Context\n"
        "from states.configure import Facts, hostname\n"
        "from states.configuring import Instance\n"
        f"root = Path({str(tmp_path)!r})\n"
        "ctx = Context(Config(paths=PathsConfig(root=str(root)), hostname=HostnameConfig(method='sethostname')))\n"
        "hostname.apply(ctx, Facts(Instance(computer_name='ns-host-01')))\n"
        "print(socket.gethostname())\n"
    )
    before = socket_hostname()
    out = subprocess.run(["unshare", "--uts", "--", sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ns-host-01"
    assert (tmp_path / "etc" / "hostname").read_text() == "ns-host-01\n"
    assert socket_hostname() == before  # the machine's own hostname is untouched


def socket_hostname() -> str:
    import socket

    return socket.gethostname()


def test_the_step_registry_imports_only_the_steps_looked_up() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom states.configure import registry\nr = registry()\n"
            "assert list(r) == ['hostname', 'publish', 'user', 'ssh_keys'] and 'user' in r and 'nope' not in r\n"
            "assert r['hostname'].__name__ == 'states.configure.hostname'\n"
            "print(sorted(m for m in sys.modules if m.startswith('states.configure.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['states.configure.hostname']", out.stdout + out.stderr
