"""The network wait, the configuring phase and the resume decisions, in-process with fakes."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from statemachine.config import Config, ConfigureConfig, FabricConfig, PathsConfig
from statemachine.context import Context
from statemachine.errors import ConfigError, HostnameError, NoRouteError, NotListeningError, RecoverableError
from statemachine.machine import Phase
from statemachine.persistence import Record
from statemachine.resume import fresh_record, plan_start, with_transition
from states import configuring, network_wait
from states.configure import Facts
from states.configuring import Instance

NOW = "2026-01-01T00:00:00.000Z"


# ---- network wait ------------------------------------------------------------------------------------------

def test_target_reads_host_and_port_and_names_a_bad_url() -> None:
    assert network_wait.target("http://168.63.129.16") == ("168.63.129.16", 80)
    assert network_wait.target("https://h:8443") == ("h", 8443)
    with pytest.raises(ConfigError):
        network_wait.target("http://h:99999")


@pytest.mark.parametrize("code, kind", [(errno.ENETUNREACH, NoRouteError), (errno.EHOSTUNREACH, NoRouteError),
                                        (errno.EADDRNOTAVAIL, NoRouteError), (errno.ECONNREFUSED, NotListeningError),
                                        (None, NotListeningError)])
def test_a_failed_connect_says_how_to_wait(monkeypatch: pytest.MonkeyPatch, code: int | None, kind: type) -> None:
    def refuse(address: Any, timeout: float) -> socket.socket:
        raise OSError(code, "x") if code is not None else socket.timeout("timed out")

    monkeypatch.setattr(network_wait.socket, "create_connection", refuse)
    with pytest.raises(kind):
        network_wait.connect("127.0.0.1", 9, 0.1)


def test_a_closed_loopback_port_is_not_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connects are refused
        with pytest.raises(NotListeningError):
            network_wait.connect("127.0.0.1", port, 0.5)


def test_the_step_probes_once_and_fires_network_up() -> None:
    probes: list[tuple[str, int]] = []
    ctx = Context(Config(fabric=FabricConfig(wireserver_url="http://127.0.0.1:8080")),
                  probe=lambda host, port, timeout: probes.append((host, port)))
    assert network_wait.step(ctx, Record()).event == "network_up"
    assert probes == [("127.0.0.1", 8080)]


# Runs in a fresh network namespace, where loopback starts down: connects to 127.0.0.1 fail with ENETUNREACH
# as before a DHCP lease. Bringing loopback up adds its address and routes, as a lease does.
_ROUTE_DRIVER = """
import json, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from states import network_wait
from statemachine.errors import NoRouteError
out = {}
changes = network_wait.route_changes()
out["subscribed"] = changes is not None
out["quiet"] = network_wait.wait_for_change(changes, 0.2)
try:
    network_wait.connect("127.0.0.1", 9, 0.2)
except NoRouteError as e:
    out["before"] = type(e).__name__
up = threading.Timer(0.3, subprocess.run, (["ip", "link", "set", "lo", "up"],), {"check": True})
up.start()
out["woken"] = network_wait.wait_for_change(changes, 60.0)
up.join()
try:
    network_wait.connect("127.0.0.1", 9, 1.0)
except Exception as e:
    out["after"] = type(e).__name__
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip")
def test_without_a_route_the_probe_sleeps_until_the_kernel_adds_one(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(_ROUTE_DRIVER)
    proc = subprocess.run(["unshare", "--net", sys.executable, str(driver), str(REPO)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # Subscribed; nothing changes by itself; no route is NoRouteError; the address and routes that loopback
    # gains wake the wait (it was given 60 s); then the connect reaches the closed port: not listening.
    assert got == {"subscribed": True, "quiet": False, "before": "NoRouteError", "woken": True,
                   "after": "NotListeningError"}


def test_the_step_raises_the_probes_error_for_the_runner_to_pace() -> None:
    def no_route(host: str, port: int, timeout: float) -> None:
        raise NoRouteError("no route")

    ctx = Context(Config(fabric=FabricConfig(wireserver_url="http://127.0.0.1:8080")), probe=no_route)
    with pytest.raises(NoRouteError):
        network_wait.step(ctx, Record(attempts=3))


# ---- configuring -------------------------------------------------------------------------------------------

class FakeImds:
    def __init__(self) -> None:
        self.calls = 0

    def get_instance(self) -> bytes:
        self.calls += 1
        return b'{"compute": {"vmId": "ABC", "osProfile": {"computerName": "web-01"}}}'


class Step:
    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result, self.error, self.calls = result, error, 0

    def apply(self, ctx: Context, facts: Facts) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result


def configuring_ctx(tmp_path: Path, steps: tuple[str, ...]) -> tuple[Context, FakeImds]:
    imds = FakeImds()
    cfg = Config(paths=PathsConfig(state_dir=str(tmp_path), root=str(tmp_path)),
                 configure=ConfigureConfig(steps=steps))
    return Context(cfg, imds=imds), imds


def test_configuring_runs_one_step_per_turn_and_reads_imds_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = {"hostname": Step(), "user": Step()}
    monkeypatch.setattr(configuring, "registry", lambda: fakes)
    ctx, imds = configuring_ctx(tmp_path, ("hostname", "user"))
    first = configuring.step(ctx, Record())
    assert first.event is None and first.updates["steps"]["hostname"]["status"] == "unchanged"
    assert first.updates["vm_id"] == "abc"  # no SMBIOS id: IMDS's, lower-cased
    record = Record(vm_id="abc")._replace(steps=first.updates["steps"])
    second = configuring.step(ctx, record)
    assert second.event == "configured" and fakes["hostname"].calls == 1 and fakes["user"].calls == 1
    assert imds.calls == 1


def test_a_recoverable_step_error_is_recorded_and_provisioning_goes_on(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configuring, "registry", lambda: {"hostname": Step(error=RecoverableError("no dbus"))})
    ctx, _ = configuring_ctx(tmp_path, ("hostname",))
    outcome = configuring.step(ctx, Record(vm_id="x"))
    assert outcome.event == "configured"
    assert outcome.updates["steps"]["hostname"]["status"] == "recoverable_error"
    assert outcome.updates["recoverable_errors"][0]["step"] == "hostname"


def test_a_fatal_step_error_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configuring, "registry", lambda: {"hostname": Step(error=HostnameError("bad name"))})
    ctx, _ = configuring_ctx(tmp_path, ("hostname",))
    with pytest.raises(HostnameError) as info:
        configuring.step(ctx, Record(vm_id="x"))
    assert info.value.supporting_data["step"] == "hostname"


def test_finished_steps_are_not_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Step()
    monkeypatch.setattr(configuring, "registry", lambda: {"hostname": fake})
    ctx, _ = configuring_ctx(tmp_path, ("hostname",))
    record = Record(vm_id="x", steps={"hostname": {"status": "done"}})
    assert configuring.step(ctx, record).event == "configured" and fake.calls == 0


def test_facts_are_kept_in_the_run_state() -> None:
    ctx = Context(Config(), imds=FakeImds())
    found = configuring.facts(ctx)
    assert ctx.run.facts is found and found.instance == Instance(vm_id="ABC", computer_name="web-01")


# ---- resume decisions --------------------------------------------------------------------------------------

def test_plan_start_decisions() -> None:
    assert plan_start(None, "a", 3, NOW)[0] == "fresh"
    done = Record(state=Phase.DONE, vm_id="a")
    assert plan_start(done, "a", 3, NOW) == ("done", done)
    assert plan_start(done, "b", 3, NOW)[0] == "new_vm"
    failed = Record(state=Phase.FAILED, vm_id="a", boot_attempts=3)
    assert plan_start(failed, "a", 3, NOW) == ("give_up", failed)
    action, record = plan_start(failed._replace(boot_attempts=1), "a", 3, NOW)
    assert action == "retry_failed" and record.state is Phase.FAILED and record.runs == 2
    action, record = plan_start(Record(state=Phase.REPORTING, vm_id="a"), "a", 3, NOW)
    assert action == "resume" and record.vm_id == "a" and record.history[-1]["event"] == "resumed"
    # A record that names no VM proves nothing about this one: provision afresh.
    assert plan_start(Record(state=Phase.REPORTING, vm_id=None), "a", 3, NOW)[0] == "new_vm"
    assert plan_start(Record(state=Phase.DONE, vm_id=None), "a", 3, NOW)[0] == "new_vm"


def test_the_retry_transition_starts_a_new_boot_attempt() -> None:
    failed = Record(state=Phase.FAILED, boot_attempts=1, attempts=4, failure_reported_at=NOW)
    record = with_transition(failed, Phase.NETWORK_WAIT, "retry_after_failure", NOW)
    assert (record.state, record.boot_attempts, record.attempts, record.failure_reported_at) == (
        Phase.NETWORK_WAIT, 2, 0, None)


phases = st.sampled_from(list(Phase))


@given(phases, st.integers(1, 5), st.integers(1, 5), st.sampled_from(["a", "b", None]))
def test_plan_start_never_touches_a_terminal_record_and_counts_only_working_runs(
        phase: Phase, boot_attempts: int, max_attempts: int, vm_id: str | None) -> None:
    record = Record(state=phase, vm_id="a", boot_attempts=boot_attempts, runs=2)
    action, planned = plan_start(record, vm_id, max_attempts, NOW)
    if action in ("done", "give_up"):
        assert planned.runs == 2 and planned.history == record.history
    elif action == "new_vm":
        assert planned == fresh_record(vm_id, NOW)
    else:
        assert planned.runs == 3


# ---- reporting: the goal state a retried POST uses -----------------------------------------------------------

GOAL_STATE = (b"<GoalState><Incarnation>{inc}</Incarnation><Container><ContainerId>c</ContainerId>"
              b"<RoleInstanceList><RoleInstance><InstanceId>i</InstanceId></RoleInstance></RoleInstanceList>"
              b"</Container></GoalState>")


class FakeWire:
    def __init__(self, answers: list[Exception | None]) -> None:
        self.answers, self.gets, self.posts = list(answers), 0, 0

    def get_goal_state(self) -> bytes:
        self.gets += 1
        return GOAL_STATE.replace(b"{inc}", str(self.gets).encode())

    def post_health(self, body: bytes) -> None:
        self.posts += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer

    def post_provisioning_health(self, body: bytes) -> None:  # pragma: no cover - not this protocol
        raise AssertionError


def post_with_retries(wire: FakeWire) -> str:
    from statemachine import retry
    from statemachine.runner import within_budget
    from states import reporting

    now = [0.0]
    ctx = Context(Config(), clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s), wireserver=wire)
    gs = within_budget(ctx, 60.0, retry.WIRESERVER, lambda: reporting.post(ctx, "Ready"))
    assert gs is not None
    return gs.incarnation


def test_a_post_retried_under_throttling_reuses_the_goal_state() -> None:
    from statemachine.errors import FabricError

    wire = FakeWire([FabricError("busy", retryable=True, status=503, retry_after=1.0)] * 2)
    assert post_with_retries(wire) == "1"
    assert (wire.gets, wire.posts) == (1, 3)


def test_a_410_always_fetches_the_goal_state_again() -> None:
    from statemachine.errors import GoneError

    wire = FakeWire([GoneError("stale"), GoneError("stale")])
    assert post_with_retries(wire) == "3"
    assert (wire.gets, wire.posts) == (3, 3)
