"""The benchmark harness on azprov alone, one cold run, so bench/run.py cannot rot (the full `make bench`
with the peers takes minutes and is not run by .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
