"""A boot whose config cannot be loaded still reports ProvisioningFailed, naming the file and the key.

Every case keeps a valid loopback system layer (the Env's), so the fabric the report goes to is always
the fake one: only the `--config` layer is broken.
"""

from __future__ import annotations

import json
from typing import Any

from conftest import Env
from fakefabric import FakeFabric


def status_json(vm: Env) -> dict[str, Any]:
    return json.loads(vm.call("--status", "--json").stdout)


def break_config(vm: Env, text: str) -> None:
    vm.config_path.write_text(vm.config_path.read_text() + text)


def test_unknown_key_is_reported_to_the_platform_and_recorded(vm: Env, fabric: FakeFabric) -> None:
    break_config(vm, "[agent]\nmax_boot_attemps = 3\n")
    out = vm.run()  # a process here; in-process (Env.call) below
    assert out.returncode == 78, out.stdout + out.stderr
    assert not fabric.ready_reports()
    [failure] = fabric.failure_reports()
    description = failure["description"]
    assert "agent.max_boot_attemps" in description and vm.config_path.name in description
    status = status_json(vm)
    assert status["state"] == "failed" and status["boot_attempts"] == 1
    assert status["failure_reported_at"]
    assert "agent.max_boot_attemps" in json.dumps(status["last_error"])
    assert status["config_error"]
    assert "Traceback" not in out.stdout + out.stderr


def test_toml_syntax_error_names_the_line(vm: Env, fabric: FakeFabric) -> None:
    break_config(vm, "[agent\nmax_boot_attempts = 3\n")
    out = vm.call()
    assert out.returncode == 78, out.stdout + out.stderr
    [failure] = fabric.failure_reports()
    assert "line" in failure["description"] and vm.config_path.name in failure["description"]


def test_a_fixed_config_provisions_on_the_next_boot(vm: Env, fabric: FakeFabric) -> None:
    vm.set("agent", max_boot_attempts=3)  # leaves room for the boot after the fix
    break_config(vm, "[log]\nlevell = 'info'\n")
    assert vm.call().returncode == 78
    vm.write()  # the operator fixes the file
    out = vm.call()
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(fabric.ready_reports()) == 1
    status = status_json(vm)
    assert status["state"] == "done" and status["boot_attempts"] == 2


def test_a_provisioned_vm_is_left_alone(vm: Env, fabric: FakeFabric) -> None:
    assert vm.call().returncode == 0
    before = len(fabric.log)
    break_config(vm, "[agent]\nmax_boot_attemps = 3\n")
    out = vm.call()
    assert out.returncode == 78
    assert len(fabric.log) == before
    assert status_json(vm)["state"] == "done"
