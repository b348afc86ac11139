"""The built wheel installs into a fresh venv and works beside PyPI's python-statemachine.

Both distributions use the import name `statemachine`, which is why azprov lives in a venv of its own
(`make install` puts it in /usr/lib/azprov). This test builds the wheel, installs it into one fresh venv and
python-statemachine into another beside it, and shows each imports its own `statemachine` and that
`azprov --help` works. Slow (it installs from the package index): run by `make test-slow`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    # Never from the checkout: `python -c` puts the cwd first on sys.path, and the repo's own
    # statemachine/ would shadow whatever the venv installed.
    out = subprocess.run([str(c) for c in cmd], cwd=cwd or Path("/"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_wheel_installs_beside_python_statemachine(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO)
    wheel = next(dist.glob("azprov-*.whl"))

    agent_venv, other_venv = tmp_path / "azprov-venv", tmp_path / "other-venv"
    for venv in (agent_venv, other_venv):
        run(sys.executable, "-m", "venv", venv)
    run(agent_venv / "bin" / "pip", "install", "-q", wheel)
    run(other_venv / "bin" / "pip", "install", "-q", "python-statemachine")

    help_text = run(agent_venv / "bin" / "azprov", "--help")
    assert "--status" in help_text and "--config" in help_text
    ours = run(agent_venv / "bin" / "python", "-c",
               "import statemachine, statemachine.cli; print(statemachine.AGENT_NAME)")
    assert ours.strip() == "azprov"
    theirs = run(other_venv / "bin" / "python", "-c",
                 "import statemachine; print(statemachine.StateMachine.__name__)")
    assert theirs.strip() == "StateMachine"
    # The wheel carries what the agent needs at run time, nothing from tests/.
    names = run(sys.executable, "-m", "zipfile", "-l", wheel)
    assert "states/goalstate.py" in names and "statemachine/runner.py" in names and "tests/" not in names
    # Every package of the checkout is in the wheel (a forgotten subpackage only fails at run time).
    for package in ("states", "statemachine"):
        for init in sorted((REPO / package).rglob("__init__.py")):
            assert str(init.relative_to(REPO)) in names
    # And the installed agent can import every module it may need.
    run(agent_venv / "bin" / "python", "-c",
        "import states.configuring, states.configure.hostname, statemachine.runner")
