"""`make demo`: the story it tells (fabric exchange beside the transitions, a fault healed, a failure
reported and explained) and that it leaves no temporary files behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def demo(tmp_path: Path, scenario: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--scenario", scenario], env=env,
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert not list(tmp_path.glob("azprov-demo-*")), "the demo left its temporary directory behind"
    return out


@pytest.mark.slow  # waits out the demo's 3 s IMDS budget; CI also runs `make demo` itself
def test_imds_down_is_reported_to_the_platform_and_explained(tmp_path: Path) -> None:
    out = demo(tmp_path, "imds-down")
    assert out.returncode == 0, out.stdout + out.stderr  # the demo succeeds when the failure is reported
    text = out.stdout
    assert "fabric POST /machine?comp=health" in text and "NotReady" in text
    assert "NotReady: result=error|reason=IMDS gave no usable instance metadata" in text
    assert "state changed event='fail' state='failed'" in text
    assert "== azprov status --long" in text and "time per state:" in text
    assert "last error:\n  reason: IMDS gave no usable" in text


@pytest.mark.slow
@pytest.mark.parametrize("scenario, healed", [("503", " 503 "), ("410", " 410 ")])
def test_a_fault_is_shown_being_healed(tmp_path: Path, scenario: str, healed: str) -> None:
    out = demo(tmp_path, scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    fault = next(i for i, line in enumerate(lines) if "fabric POST" in line and healed in line)
    ready = next(i for i, line in enumerate(lines) if "fabric POST" in line and line.endswith("  Ready"))
    assert fault < ready and "state:            done" in out.stdout
