"""The benchmark harnesses on azprov alone, so bench/run.py and bench/fleet.py cannot rot (the full
`make bench` and `make bench-fleet` with the peers take many minutes and are not run by .ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_bench_quick_run_reports_ready_and_sets_the_hostname() -> None:
    azprov = Path(sys.executable).parent / "azprov"
    assert azprov.exists(), "the bench runs the installed console script; install the project into this venv"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["agent"] == "azprov" and result["exit"] == 0 and result["ready_count"] == 1
    assert result["hostname"] == "bench-vm-01"
    assert 0 < result["ready_s"] <= result["wall_s"] < 60
    assert result["rss_kib"] > 1024 and result["cpu_s"] > 0
    assert result["requests"]["health"] == 1


@pytest.mark.slow  # ~5 s: a namespace, a fake for three VMs, three agents
def test_fleet_smoke_three_vms_all_ready() -> None:
    """bench/fleet.py --smoke: three azprov agents released together against the fleet fake, inside a private
    network namespace, each with its own addresses and ids; every one must reach Ready."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for the private network namespace")
    probe = subprocess.run(["unshare", "--net", "true"] if os.geteuid() == 0
                           else ["unshare", "--net", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode(errors='replace').strip()}")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "fleet.py"), "--smoke"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    [result] = json.loads(out.stdout)
    assert result["n"] == 3 and result["never_ready"] == 0 and result["exit_codes"] == {"0": 3}
    wire = result["services"]["wireserver"]
    assert wire["throttled"] == 0 and wire["per_vm"] >= 2  # a goal state and a Ready each, at least
    assert result["spawn_to_ready_s"]["max"] is not None and result["connects"] >= 3
