"""End to end: the `azprov` CLI against the loopback fake fabric, as a subprocess for each path a process
takes (first boot, later boot, status, usage and config errors, a crash and its resume, the console script)
and in-process (`Env.call`, the same `cli.main`) where a test is about what the run decides."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import REPO, Env
from fakefabric import FakeFabric
from scenarios import wait_for


def status_json(vm: Env) -> dict[str, Any]:
    out = vm.call("--status", "--json")  # as a process in test_status_before_any_run and the console script test
    return json.loads(out.stdout)


def test_first_boot_reports_ready_and_sets_hostname(vm: Env, fabric: FakeFabric) -> None:
    out = vm.run()
    assert out.returncode == 0, out.stdout + out.stderr
    ready = fabric.ready_reports()
    assert len(ready) == 1 and ready[0]["incarnation"] == "1"
    assert ready[0]["headers"]["x-ms-agent-name"] == "azprov"
    # A fresh goal state came right before the POST.
    routes = [e["route"] for e in fabric.log]
    assert routes[routes.index("health") - 1] == "goalstate"
    assert vm.hostname() == "web-01"
    status = status_json(vm)
    assert status["state"] == "done" and status["vm_id"] == vm.vm_id and status["incarnation"] == "1"
    assert status["reported_ready_at"] and status["last_error"] is None
    assert [h["state"] for h in status["history"]] == ["network_wait", "goalstate", "reporting",
                                                        "configuring", "done"]
    assert all(h["at"].endswith("Z") for h in status["history"])
    assert vm.call("--status").returncode == 0


def test_reboot_of_a_provisioned_vm_sends_nothing(vm: Env, fabric: FakeFabric) -> None:
    assert vm.call().returncode == 0
    before = len(fabric.log)
    out = vm.run()
    assert out.returncode == 0 and "already provisioned" in out.stdout
    assert len(fabric.log) == before


def test_done_fast_path_imports_nothing_heavy(vm: Env) -> None:
    assert vm.call().returncode == 0
    code = ("import sys\nfrom statemachine.cli import main\nrc = main(['--config', sys.argv[1]])\n"
            "heavy = [m for m in ('requests', 'lxml', 'transitions', 'urllib3') if m in sys.modules]\n"
            "print('RC', rc, 'HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code, str(vm.config_path)], env=vm.env(), capture_output=True,
                         text=True, cwd=REPO)
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr


def test_new_vm_from_the_image_provisions_afresh(vm: Env, fabric: FakeFabric) -> None:
    assert vm.call().returncode == 0
    first_id = vm.vm_id
    vm.new_vm()
    out = vm.call()
    assert out.returncode == 0 and "another VM" in out.stdout
    assert len(fabric.ready_reports()) == 2
    assert status_json(vm)["vm_id"] == vm.vm_id != first_id
    prev = json.loads((vm.state_dir / "state.json.prev").read_text())
    assert prev["vm_id"] == first_id


@pytest.mark.slow  # covered in-process by tests/test_runner.py
def test_retries_then_ready(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"status": 500}, {"status": 503, "headers": {"Retry-After": "0.1"}},
                                    {"action": "reset"}])
    fabric.set_script("imds", [{"status": 404}, {"status": 429}])
    out = vm.run()
    assert out.returncode == 0, out.stdout
    assert len(fabric.ready_reports()) == 1
    assert out.stdout.count("retrying") == 5


def test_410_refetches_the_goal_state_and_reposts(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("health", [{"action": "bump"}])
    assert vm.call().returncode == 0
    ready = fabric.ready_reports()
    assert len(ready) == 1 and ready[0]["incarnation"] == "2"
    assert status_json(vm)["incarnation"] == "2"


def test_wireserver_listening_late(make_vm: Any) -> None:
    fake = FakeFabric()
    fake.reserve_port()
    vm = make_vm(fake.url)
    timer = threading.Timer(0.5, fake.start)
    timer.start()
    try:
        out = vm.call()
        assert out.returncode == 0, out.stdout
        assert len(fake.ready_reports()) == 1
    finally:
        timer.join()
        fake.stop()


@pytest.mark.slow  # the same end-to-end run as test_kvp_e2e's IMDS budget test
def test_imds_budget_exhausted_reports_failure(vm: Env, fabric: FakeFabric) -> None:
    vm.set("fabric", imds_timeout=1.0)
    fabric.set_script("imds", [{"status": 500}] * 100)
    out = vm.run()
    assert out.returncode == 1
    failures = fabric.failure_reports()
    assert len(failures) == 1
    description = failures[0]["description"]
    reason = "IMDS gave no usable instance metadata within fabric.imds_timeout"
    assert description.startswith(f"result=error|reason={reason}")
    assert "fabric.imds_timeout" in description and f"vm_id={vm.vm_id}" in description
    status = status_json(vm)
    assert status["state"] == "failed" and status["failure_reported_at"]
    assert status["last_error"]["data"]["budget_key"] == "fabric.imds_timeout"
    assert vm.run("--status").returncode == 1


@pytest.mark.slow  # covered in-process by tests/test_runner.py and tests/test_lifecycle_stateful.py
def test_failed_vm_retries_on_next_boot_then_gives_up(vm: Env, fabric: FakeFabric) -> None:
    vm.set("fabric", imds_timeout=0.5).set("agent", max_boot_attempts=2)
    fabric.set_script("imds", [{"status": 500}] * 1000)
    assert vm.run().returncode == 1
    assert vm.run().returncode == 1
    assert status_json(vm)["boot_attempts"] == 2
    before = len(fabric.log)
    out = vm.run()
    assert out.returncode == 1 and "not trying again" in out.stdout
    assert len(fabric.log) == before
    # Once IMDS is healthy and a new boot is allowed, it completes.
    fabric.set_script("imds", [])
    vm.set("agent", max_boot_attempts=3)
    assert vm.run().returncode == 0
    assert status_json(vm)["state"] == "done"


@pytest.mark.slow  # test_hostile's invalid-hostname runs cover this path in the quick suite
def test_no_valid_hostname_is_done_with_recoverable_error(vm: Env, fabric: FakeFabric) -> None:
    fabric.computer_name = "bad_name;reboot"
    out = vm.run()
    assert out.returncode == 0
    assert vm.hostname() is None
    assert vm.run("--status").returncode == 2
    status = status_json(vm)
    assert status["steps"]["hostname"]["status"] == "recoverable_error"
    assert status["recoverable_errors"][0]["reason"] == "no valid hostname in the instance metadata"


def test_broken_record_is_moved_aside_and_the_vm_still_reports_ready(vm: Env, fabric: FakeFabric) -> None:
    vm.state_dir.mkdir(mode=0o700)
    vm.state_file.write_text('{"schema": 1, "state": "repor')
    vm.state_file.chmod(0o600)
    out = vm.call()
    assert out.returncode == 0 and "moved aside" in out.stdout
    assert len(fabric.ready_reports()) == 1
    assert len(list(vm.state_dir.glob("state.json.corrupt-*"))) == 1


def test_status_before_any_run(vm: Env) -> None:
    out = vm.run("--status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "not_started"
    assert "has not run" in vm.call("--status").stdout


@pytest.mark.parametrize("args", [["--json"], ["--wait"], ["--bogus"], ["extra"]])
def test_usage_errors_exit_64(vm: Env, args: list[str]) -> None:
    assert vm.call(*args).returncode == 64  # as a process: the console script test below


def test_config_errors_exit_78_naming_the_key(vm: Env) -> None:
    vm.set("fabric", wireserver_ur="http://127.0.0.1:1")
    out = vm.run()
    assert out.returncode == 78 and "fabric.wireserver_ur" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_journal_priority_prefix_only_under_systemd(vm: Env) -> None:
    plain = vm.call()
    assert not plain.stdout.startswith("<")
    journal = vm.call(env={"JOURNAL_STREAM": "8:1234"})
    assert all(line.startswith("<6>") for line in journal.stdout.splitlines())


# One state in the quick suite; the stateful test covers resuming from every phase in-process.
@pytest.mark.parametrize("route, state", [pytest.param(None, "network_wait", marks=pytest.mark.slow),
                                          pytest.param("goalstate", "goalstate", marks=pytest.mark.slow),
                                          ("health", "reporting"),
                                          pytest.param("imds", "configuring", marks=pytest.mark.slow)])
def test_sigkill_in_each_state_then_resume(make_vm: Any, route: str | None, state: str) -> None:
    fake = FakeFabric()
    if route is None:
        fake.reserve_port()  # nobody listens yet: the agent sits in NETWORK_WAIT
    else:
        fake.set_script(route, [{"action": "hang", "delay": 60}])
        fake.start()
    vm = make_vm(fake.url)
    vm.set("fabric", request_timeout=30.0, network_timeout=60.0)
    try:
        proc = vm.popen()
        wait_for(lambda: vm.state_file.exists() and json.loads(vm.state_file.read_text())["state"] == state
                 and (route is None or fake.requests(route)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if route is None:
            fake.start()
        else:
            fake.set_script(route, [])
        out = vm.run()
        assert out.returncode == 0, out.stdout
        assert "action='resume'" in out.stdout
        assert any(r["incarnation"] == fake.incarnation for r in fake.ready_reports())
        assert status_json(vm)["state"] == "done"
    finally:
        fake.stop()


@pytest.mark.slow  # test_reliability's SIGTERM case runs the same path in the quick suite
def test_sigterm_persists_and_exits_promptly(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("imds", [{"action": "hang", "delay": 60}])
    vm.set("fabric", request_timeout=30.0)
    proc = vm.popen()
    wait_for(lambda: fabric.requests("imds"))
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 143 and time.monotonic() - sent < 2.0
    assert "terminated" in output
    status = status_json(vm)
    assert status["state"] == "configuring" and "terminated" in status["last_error"]["reason"]
    fabric.set_script("imds", [])
    assert vm.run().returncode == 0


@pytest.mark.slow  # covered in-process by tests/test_runner.py
def test_a_bug_in_a_step_still_tells_the_platform(vm: Env, fabric: FakeFabric) -> None:
    out = vm.run(env={"AZPROV_FAILPOINT": "configuring.before_work:raise"})
    assert out.returncode == 1
    assert "unexpected internal error" in fabric.failure_reports()[0]["description"]
    assert status_json(vm)["last_error"]["data"]["error"] == "FailpointError"


def test_the_ready_uses_the_goal_state_just_fetched_and_a_410_fetches_anew(vm: Env, fabric: FakeFabric) -> None:
    assert vm.call().returncode == 0
    assert [e["route"] for e in fabric.log] == ["goalstate", "health", "imds"]
    other = FakeFabric(script={"health": [{"action": "bump"}]}).start()
    try:
        again = Env(vm.tmp / "second", other.url)
        assert again.call().returncode == 0
        assert [(e["route"], e["status"]) for e in other.log] == [
            ("goalstate", 200), ("health", 410), ("goalstate", 200), ("health", 200), ("imds", 200)]
        assert other.ready_reports()[0]["incarnation"] == "2"
    finally:
        other.stop()


def test_the_console_script_exits_without_teardown_yet_loses_no_output(vm: Env, fabric: FakeFabric) -> None:
    """statemachine.launch leaves by os._exit after flushing: the log lines, the exit code and the record
    must all be there, for a run, a later boot, a usage error and --status (each piped, so buffered)."""
    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "statemachine.launch", *args]
        return subprocess.run(argv, env=vm.env(), capture_output=True, text=True, timeout=60, cwd=REPO)

    first = launch("--config", str(vm.config_path))
    assert first.returncode == 0 and "provisioning finished" in first.stdout + first.stderr, first
    assert len(fabric.ready_reports()) == 1
    status = launch("--config", str(vm.config_path), "--status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "done", status
    assert launch("--config", str(vm.config_path)).returncode == 0  # a later boot
    usage = launch("--config", str(vm.config_path), "--wait")
    assert usage.returncode == 64 and "usage:" in usage.stderr, usage
