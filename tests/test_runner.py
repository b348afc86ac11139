"""The runner in-process: the loop, retries, the failure path, resuming, and the run around it (lock, load,
quarantine, plan). Steps are fakes and time is virtual, so every case takes milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from statemachine import persistence, runner
from statemachine.config import AgentConfig, Config, FabricConfig, IdentityConfig, KvpConfig, PathsConfig
from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, FabricError, GoneError, LockError, NotListeningError
from statemachine.lock import RunLock
from statemachine.machine import Phase
from statemachine.persistence import Record

SUCCESS = {Phase.NETWORK_WAIT: "network_up", Phase.GOALSTATE: "goal_state_received",
           Phase.REPORTING: "reported", Phase.CONFIGURING: "configured"}



class Fabric:
    """Scripted step outcomes per phase: "ok", an exception to raise, or "progress" (CONFIGURING only)."""

    def __init__(self, script: dict[Phase, list[Any]] | None = None) -> None:
        self.script = {p: list(v) for p, v in (script or {}).items()}
        self.calls: list[Phase] = []
        self.failure_reports: list[str] = []

    def steps(self) -> dict[Phase, runner.Step]:
        return {phase: self._step(phase) for phase in SUCCESS}

    def _step(self, phase: Phase) -> runner.Step:
        def step(ctx: Context, record: Record) -> Outcome:
            self.calls.append(phase)
            outcome = self.script.get(phase, []).pop(0) if self.script.get(phase) else "ok"
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome == "progress":
                return Outcome(None, {"steps": {**record.steps, f"s{len(record.steps)}": {"status": "done"}}})
            return Outcome(SUCCESS[phase])
        return step

    def report_failure(self, ctx: Context, record: Record, error: AgentError) -> bool:
        self.failure_reports.append(error.reason)
        return True


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    uuid = tmp_path / "product_uuid"
    uuid.write_text("11111111-2222-3333-4444-555555555555\n")
    (tmp_path / "efi").mkdir()
    return Config(fabric=FabricConfig(network_timeout=5.0, wireserver_timeout=5.0, imds_timeout=5.0),
                  paths=PathsConfig(state_dir=str(tmp_path / "state"), root=str(tmp_path)),
                  identity=IdentityConfig(product_uuid_path=str(uuid), efi_path=str(tmp_path / "efi")),
                  kvp=KvpConfig(enabled=False), agent=AgentConfig(max_boot_attempts=2))


def run(cfg: Config, fabric: Fabric, clock: FakeClock | None = None) -> Phase:
    clock = clock or FakeClock(1000.0)
    return runner.run(Context(cfg, clock=clock, sleep=clock.sleep), fabric.steps(), fabric.report_failure)


def on_disk(cfg: Config) -> Record:
    record = persistence.load(cfg.state_dir / persistence.STATE_FILE)
    assert record is not None
    return record


def events(record: Record) -> list[tuple[str, str]]:
    return [(str(h["state"]), str(h["event"])) for h in record.history]


def test_a_clean_run_walks_every_phase_and_saves_each_transition(cfg: Config) -> None:
    assert run(cfg, Fabric()) is Phase.DONE
    record = on_disk(cfg)
    assert events(record) == [("network_wait", "start"), ("goalstate", "network_up"),
                              ("reporting", "goal_state_received"), ("configuring", "reported"),
                              ("done", "configured")]
    assert record.runs == 1 and record.boot_attempts == 1 and record.attempts == 0


def test_a_later_run_of_a_done_vm_writes_nothing(cfg: Config) -> None:
    run(cfg, Fabric())
    path = cfg.state_dir / persistence.STATE_FILE
    before = path.stat().st_mtime_ns, path.read_bytes()
    fabric = Fabric()
    assert run(cfg, fabric) is Phase.DONE
    assert fabric.calls == [] and (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_retryable_errors_are_retried_saved_and_reset_on_the_next_transition(cfg: Config) -> None:
    clock = FakeClock(1000.0)
    fabric = Fabric({Phase.GOALSTATE: [FabricError("busy", retryable=True, status=503)] * 3})
    assert run(cfg, fabric, clock) is Phase.DONE
    assert fabric.calls.count(Phase.GOALSTATE) == 4 and len(clock.slept) == 3
    record = on_disk(cfg)
    assert record.attempts == 0 and record.last_error is not None and record.last_error["reason"] == "busy"


def test_network_probes_are_neither_saved_nor_counted_as_failures(cfg: Config) -> None:
    saves: list[Record] = []
    fabric = Fabric({Phase.NETWORK_WAIT: [NotListeningError("refused")] * 20})
    cfg = cfg._replace(fabric=cfg.fabric._replace(network_timeout=60.0))
    real_save = persistence.save
    try:
        persistence.save = lambda path, record: (saves.append(record), real_save(path, record))[1]  # type: ignore[assignment]
        assert run(cfg, fabric) is Phase.DONE
    finally:
        persistence.save = real_save  # type: ignore[assignment]
    assert len(saves) == 5  # start and the four transitions: no save per probe
    assert on_disk(cfg).last_error is None


def test_a_410_is_retried_at_once(cfg: Config) -> None:
    clock = FakeClock(1000.0)
    fabric = Fabric({Phase.REPORTING: [GoneError("stale")] * 3})
    assert run(cfg, fabric, clock) is Phase.DONE
    assert clock.slept == [0.0, 0.0, 0.0]


def test_an_exhausted_budget_fails_names_it_and_reports(cfg: Config) -> None:
    fabric = Fabric({Phase.GOALSTATE: [FabricError("busy", retryable=True)] * 10_000})
    assert run(cfg, fabric) is Phase.FAILED
    record = on_disk(cfg)
    assert record.state is Phase.FAILED and record.failure_reported_at is not None
    assert record.last_error is not None and record.last_error["data"]["budget_key"] == "fabric.wireserver_timeout"
    assert fabric.failure_reports == ["WireServer gave no usable goal state within fabric.wireserver_timeout"]


def test_a_bug_in_a_step_fails_the_run_and_is_still_reported(cfg: Config) -> None:
    fabric = Fabric({Phase.CONFIGURING: [ZeroDivisionError("boom")]})
    assert run(cfg, fabric) is Phase.FAILED
    assert fabric.failure_reports == ["unexpected internal error"]


def test_failed_ends_the_run_and_the_next_run_retries_through_the_transition(cfg: Config) -> None:
    assert run(cfg, Fabric({Phase.REPORTING: [AgentError("rejected")]})) is Phase.FAILED
    assert run(cfg, Fabric()) is Phase.DONE
    record = on_disk(cfg)
    assert ("network_wait", "retry_after_failure") in events(record)
    assert record.boot_attempts == 2 and record.runs == 2 and record.failure_reported_at is None


def test_failed_with_every_attempt_used_is_terminal(cfg: Config) -> None:
    for _ in range(2):
        assert run(cfg, Fabric({Phase.GOALSTATE: [AgentError("rejected")]})) is Phase.FAILED
    before = (cfg.state_dir / persistence.STATE_FILE).read_bytes()
    fabric = Fabric()
    assert run(cfg, fabric) is Phase.FAILED
    assert fabric.calls == [] and (cfg.state_dir / persistence.STATE_FILE).read_bytes() == before


def test_a_run_cut_short_resumes_where_it_was_and_says_so(cfg: Config) -> None:
    record = Record(state=Phase.REPORTING, vm_id="11111111-2222-3333-4444-555555555555",
                    history=({"state": "network_wait", "at": "2026-01-01T00:00:00.000Z", "event": "start"},
                             {"state": "reporting", "at": "2026-01-01T00:00:01.000Z", "event": "goal_state_received"}))
    cfg.state_dir.mkdir(mode=0o700)
    persistence.save(cfg.state_dir / persistence.STATE_FILE, record)
    fabric = Fabric()
    assert run(cfg, fabric) is Phase.DONE
    assert fabric.calls == [Phase.REPORTING, Phase.CONFIGURING]
    resumed = on_disk(cfg)
    assert ("reporting", "resumed") in events(resumed) and resumed.runs == 2


def test_a_broken_record_is_quarantined_and_provisioning_starts_fresh(cfg: Config) -> None:
    cfg.state_dir.mkdir(mode=0o700)
    (cfg.state_dir / persistence.STATE_FILE).write_text("{not json")
    assert run(cfg, Fabric()) is Phase.DONE
    assert [p.name for p in cfg.state_dir.glob("state.json.corrupt-*")]
    assert on_disk(cfg).runs == 1


def test_a_configuring_progress_is_saved_before_the_next_step(cfg: Config) -> None:
    fabric = Fabric({Phase.CONFIGURING: ["progress", "progress", "ok"]})
    assert run(cfg, fabric) is Phase.DONE
    assert sorted(on_disk(cfg).steps) == ["s0", "s1"]


def test_a_held_lock_is_waited_for_then_given_up_with_lock_error(cfg: Config) -> None:
    cfg = cfg._replace(fabric=cfg.fabric._replace(network_timeout=0.01, wireserver_timeout=0.01,
                                                  imds_timeout=0.01))
    cfg.state_dir.mkdir(mode=0o700)
    holder = RunLock(cfg.state_dir / persistence.LOCK_FILE)
    assert holder.try_acquire()
    try:
        with pytest.raises(LockError) as info:
            run(cfg, Fabric())
        assert info.value.supporting_data["pid"] == str(__import__("os").getpid())
    finally:
        holder.release()
    assert run(cfg, Fabric()) is Phase.DONE


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path / "lock"), RunLock(tmp_path / "lock")
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_an_unusable_state_directory_still_provisions(tmp_path: Path, cfg: Config) -> None:
    (tmp_path / "file").write_text("")
    cfg = cfg._replace(paths=cfg.paths._replace(state_dir=str(tmp_path / "file" / "state")))
    assert run(cfg, Fabric()) is Phase.DONE


def test_schema_1_records_without_the_new_keys_are_read_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 1, "state": "done", "boot_attempts": 1}))
    path.chmod(0o600)
    record = persistence.load(path)
    assert record is not None and record.runs == 1

