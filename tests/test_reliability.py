"""The reliability matrix: every crash point, SIGTERM in every state, every fabric fault.

Each case runs the real CLI as a subprocess against the loopback fake (see tests/scenarios.py). Quick
representatives run in `make test`; the full matrix is `slow` (`make test-slow`, run by .ci/run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import examples
from fakefabric import FakeFabric
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenarios import (
    FAST,
    FAULTS,
    SAVES_IN_A_RUN,
    Crash,
    Env,
    Fault,
    crash_matrix,
    crash_points,
    read_record,
    run_crash,
    run_fault,
    run_sigterm,
)

from statemachine import persistence

# The rest run in-process in tests/test_lifecycle_stateful.py on every `make test`.
QUICK_CRASHES = {"reporting.after_post:kill", "persist.before_rename:exit@4"}
# The save that records the Ready is the 4th of a run (start, →goalstate, →reporting, →configuring).
READY_SAVE = 4
# Where a crash falls between the WireServer's 200 and the record saying so: a second Ready is expected.
DUPLICATE_WINDOW = {"reporting.after_post", "reporting.after_work"} | {
    f"{p}@{READY_SAVE}" for p in ("persist.before_write", "persist.before_rename")}


def _param(crash: Crash) -> pytest.param:  # type: ignore[valid-type]
    marks = () if crash.name in QUICK_CRASHES else (pytest.mark.slow,)
    return pytest.param(crash, id=crash.name, marks=marks)


@pytest.mark.parametrize("crash", [_param(c) for c in crash_matrix()])
def test_crash_then_reboot_reaches_done_with_one_ready(crash: Crash, tmp_path: Path) -> None:
    result = run_crash(crash, tmp_path)
    detail = result.detail
    assert detail["first_rc"] == (-9 if crash.action == "kill" else 137), detail["first_output"]
    # Never half-written: whatever the crash left is a whole, valid record (or none at all).
    if detail["record_after_crash"] is not None:
        persistence.from_json(detail["record_after_crash"])
    assert result.rc == 0, result.output
    assert result.state == "done" and result.ready >= 1
    key = crash.point if crash.point.startswith("reporting") else f"{crash.point}@{crash.nth}"
    if result.ready > 1:
        assert result.duplicate_allowed and key in DUPLICATE_WINDOW, (crash.name, result.ready)
    assert "Traceback" not in result.output
    assert detail["leftovers"] == [], "a crash's temp file outlived the next run"
    states = [h["state"] for h in (result.record or {})["history"]]
    assert states[-1] == "done" and states.index("reporting") < states.index("configuring")


def test_the_duplicate_window_really_duplicates(tmp_path: Path) -> None:
    """The matrix's allowance is not vacuous: a crash right after the 200 does produce a second Ready."""
    result = run_crash(Crash("reporting.after_post", "kill"), tmp_path)
    assert result.ready == 2 and result.duplicate_allowed


@pytest.mark.slow  # tests/test_runner.py counts the saves of a run in-process
def test_matrix_covers_every_save_of_a_run(tmp_path: Path) -> None:
    """SAVES_IN_A_RUN must match reality, or the persist crash points miss the later saves."""
    result = run_crash(Crash("persist.before_write", "exit", SAVES_IN_A_RUN + 1), tmp_path)
    assert result.detail["first_rc"] == 0, "a run saves more often than SAVES_IN_A_RUN"
    result = run_crash(Crash("persist.before_write", "exit", SAVES_IN_A_RUN), tmp_path / "again")
    assert result.detail["first_rc"] == 137


@pytest.mark.parametrize("phase", [pytest.param("network_wait", marks=pytest.mark.slow),
                                   pytest.param("goalstate", marks=pytest.mark.slow), "reporting",
                                   pytest.param("configuring", marks=pytest.mark.slow)])
def test_sigterm_in_each_state_persists_logs_and_resumes(phase: str, tmp_path: Path) -> None:
    result = run_sigterm(phase, tmp_path)
    detail = result.detail
    assert detail["term_rc"] == 143, detail["term_output"]
    assert detail["term_seconds"] < 2.0
    assert "terminated" in detail["term_output"] and f"state='{phase}'" in detail["term_output"]
    assert "Traceback" not in detail["term_output"]
    held = detail["record_after_term"]
    assert held["state"] == phase and "terminated" in held["last_error"]["reason"]
    assert result.rc == 0 and result.state == "done" and result.ready == 1, result.output
    assert "action='resume'" in result.output


# The 410 and XXE cases also run end to end in test_cli.py and test_hostile.py on every `make test`.
QUICK_FAULTS = {"goalstate: 503 storm, Retry-After", "imds: 404 for a while", "goalstate: malformed body",
                "health: connection reset", "dead proxy in the environment"}


def _fault_param(fault: Fault) -> pytest.param:  # type: ignore[valid-type]
    slow = fault.name not in QUICK_FAULTS
    return pytest.param(fault, id=fault.name, marks=(pytest.mark.slow,) if slow else ())


@pytest.mark.parametrize("fault", [_fault_param(f) for f in FAULTS])
def test_fabric_fault(fault: Fault, tmp_path: Path) -> None:
    result = run_fault(fault, tmp_path)
    assert "Traceback" not in result.output, result.output
    assert result.elapsed < fault.max_time, (result.elapsed, result.output)
    if fault.expect == "done":
        assert result.rc == 0 and result.state == "done", result.output
        assert result.ready == 1 or (result.duplicate_allowed and result.ready >= 1), result.ready
        return
    assert result.rc == 1 and result.state == "failed", result.output
    assert result.last_error and result.last_error["reason"], "FAILED without a clear last_error"
    assert (result.failure_reports >= 1) == fault.reported, result.output
    assert (result.record or {}).get("failure_reported_at") is not None if fault.reported else True


def test_failpoint_spec_parsing() -> None:
    from statemachine.failpoints import _parse

    assert _parse("persist.before_rename:kill@4, reporting.after_post:exit,x") == {
        "persist.before_rename": ("kill", 4), "reporting.after_post": ("exit", 1), "x": ("kill", 1)}
    assert _parse("") == {} and _parse("a:raise@zero") == {"a": ("raise", 1)}


def test_failpoints_are_inert_unless_armed() -> None:
    from statemachine import failpoints

    assert failpoints._ARMED == {}  # the test environment arms nothing
    for name in failpoints.POINTS:
        failpoints.failpoint(name)  # returns: no crash, no exception


def test_raise_failpoint_counts_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    from statemachine import failpoints

    monkeypatch.setattr(failpoints, "_ARMED", {"p": ("raise", 2)})
    monkeypatch.setattr(failpoints, "_HITS", {})
    failpoints.failpoint("p")
    with pytest.raises(failpoints.FailpointError):
        failpoints.failpoint("p")
    failpoints.failpoint("p")  # only the N-th hit fires


@pytest.mark.parametrize("point", ["fail.before_report", pytest.param("fail.after_report", marks=pytest.mark.slow)])
@pytest.mark.parametrize("action", ["kill", pytest.param("exit", marks=pytest.mark.slow)])
def test_crash_on_the_failure_path_then_reboot_ends_ready(point: str, action: str, tmp_path: Path) -> None:
    """IMDS fails past its budget, the agent dies around the ProvisioningFailed POST; IMDS then heals. The
    next boot must finish, and the last word the platform heard for this incarnation must be Ready."""
    with FakeFabric() as fab:
        fab.set_script("imds", [{"status": 500}] * 10000)
        vm = Env(tmp_path, fab.url)
        vm.set("fabric", imds_timeout=0.5)
        first = vm.run(env={"AZPROV_FAILPOINT": f"{point}:{action}"})
        assert first.returncode == (-9 if action == "kill" else 137), first.stdout
        fab.set_script("imds", [])
        second = vm.run()
        assert second.returncode == 0, second.stdout
        assert (read_record(vm) or {})["state"] == "done"
        reports = [e for e in fab.requests("health") if e["status"] == 200 and e["incarnation"] == fab.incarnation]
        assert reports and reports[-1]["health_state"] == "Ready", [r["health_state"] for r in reports]


@pytest.mark.parametrize("nth", [pytest.param(n, marks=() if n in (1, 4) else pytest.mark.slow)
                                 for n in range(1, SAVES_IN_A_RUN + 1)])
def test_a_bug_in_saving_does_not_cost_the_ready(nth: int, tmp_path: Path) -> None:
    """`raise` at a persist point stands for an unforeseen exception while saving: the run goes on in
    memory, reports Ready and ends DONE (logging the traceback once), instead of dying before the Ready."""
    with FakeFabric() as fab:
        vm = Env(tmp_path, fab.url)
        vm.set("fabric", **FAST)
        out = vm.run(env={"AZPROV_FAILPOINT": f"persist.before_rename:raise@{nth}"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "continuing without persistence" in out.stdout
        assert len(fab.ready_reports()) == 1


@pytest.mark.slow
@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=st.lists(st.tuples(st.sampled_from(crash_points()), st.sampled_from(["kill", "exit"])),
                         min_size=1, max_size=3))
def test_any_crash_schedule_then_a_clean_boot_ends_done(schedule: list[tuple[tuple[str, int], str]],
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Several boots in a row, each dying at a random failpoint, then one that is left alone."""
    with FakeFabric() as fab:
        vm = Env(tmp_path_factory.mktemp("vm"), fab.url)
        vm.set("fabric", **FAST)
        for (point, nth), action in schedule:
            vm.run(env={"AZPROV_FAILPOINT": f"{point}:{action}@{nth}"})
            left = read_record(vm)
            if left is not None:
                persistence.from_json(left)  # never half-written, whatever the schedule
        out = vm.run()
        assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stdout
        assert (read_record(vm) or {})["state"] == "done"
        ready = [r for r in fab.ready_reports() if r["incarnation"] == fab.incarnation]
        assert 1 <= len(ready) <= 1 + len(schedule)  # at most one extra Ready per crash in the window
        assert not list(vm.state_dir.glob(".state.json-*"))
