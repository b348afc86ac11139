"""A long network wait ends in Ready: the WireServer refusing connections for 20 s, and no route at all for
20 s (DHCP still running). Both once crashed the agent after ~9 s of polling, when a float power of the
unbounded probe counter overflowed; the short late-network tests never polled long enough to see it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import REPO, Env
from fakefabric import FakeFabric

pytestmark = pytest.mark.slow

OUTAGE = 20.0


def test_wireserver_refusing_for_20_s_ends_in_ready(make_vm: Callable[[str], Env]) -> None:
    fake = FakeFabric()
    fake.reserve_port()  # nothing listens yet: every connect is refused
    vm = make_vm(fake.url).set("fabric", network_timeout=OUTAGE + 30)
    timer = threading.Timer(OUTAGE, fake.start)
    timer.start()
    try:
        out = vm.run(timeout=OUTAGE + 60)
    finally:
        timer.join()
        fake.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(fake.ready_reports()) == 1
    assert "Traceback" not in out.stdout + out.stderr


# Runs inside a fresh network namespace, where the loopback interface starts down: a connect to 127.0.0.1
# fails with ENETUNREACH (no route, no packet sent), as on a VM whose DHCP has not finished. After the
# outage the "lease" arrives (loopback comes up) and the fake fabric starts listening at once.
_DRIVER = """
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from fakefabric import FakeFabric
port, outage, argv, env = int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
agent = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
time.sleep(outage)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with FakeFabric(port=port) as fake:
    output, _ = agent.communicate(timeout=outage + 60)
    print(json.dumps({"rc": agent.returncode, "output": output, "ready": len(fake.ready_reports())}))
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip")
def test_no_route_for_20_s_ends_in_ready(make_vm: Callable[[str], Env], tmp_path: Path) -> None:
    port = 18080  # any port: the namespace is new and empty
    vm = make_vm(f"http://127.0.0.1:{port}").set("fabric", network_timeout=OUTAGE + 30)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    proc = subprocess.run(["unshare", "--net", sys.executable, str(driver), str(REPO / "tests"), str(port),
                           str(OUTAGE), json.dumps(vm.argv()), json.dumps(vm.env())],
                          capture_output=True, text=True, timeout=OUTAGE + 90, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["output"]
    assert result["ready"] == 1
    assert "Traceback" not in result["output"]
