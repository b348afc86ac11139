"""requests without its charset detector: azprov's fabric clients still work and never load one."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PROBE = """
import sys
import statemachine.fabric as fabric
from fakefabric import FakeFabric
with FakeFabric() as fab:
    wire = fabric.WireServer(fabric.Http(fabric.new_session(), 5.0), fab.url)
    body = wire.get_goal_state()
print("DETECTOR", [m for m in ("charset_normalizer", "chardet") if m in sys.modules], b"<Incarnation>" in body)
import charset_normalizer  # still importable by anyone who wants it later
print("LATER", charset_normalizer.__name__)
"""


def test_fabric_clients_work_without_a_charset_detector() -> None:
    out = subprocess.run([sys.executable, "-W", "error::Warning", "-c", PROBE], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}, timeout=60)
    assert "DETECTOR [] True" in out.stdout, out.stdout + out.stderr
    assert "LATER charset_normalizer" in out.stdout, out.stdout + out.stderr
