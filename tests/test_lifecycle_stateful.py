"""A Hypothesis state machine over the runner and the persisted record, in-process.

Each rule is one boot: step outcomes are drawn (success, retryable error, fatal error), a crash may be
armed at any failpoint (a power cut: the run stops there, and nothing after it happens), and the next rule
boots again from whatever is on disk. Checked after every boot: the record on disk is whole and tells a
path the lifecycle table allows; a run that was not cut short left on disk the phase it ended in; DONE and
a spent FAILED never change again; and a boot where the fabric answers ends DONE unless attempts are spent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis
import pytest
from conftest import FakeClock, examples
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import statemachine.persistence
import statemachine.runner
from statemachine import persistence, runner
from statemachine.config import AgentConfig, Config, FabricConfig, IdentityConfig, KvpConfig, PathsConfig
from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, FabricError
from statemachine.failpoints import PHASE_POINTS, POINTS
from statemachine.machine import ACTIVE, TRANSITIONS, Phase, is_terminal
from statemachine.persistence import Record

SUCCESS = {t["source"]: t["trigger"] for t in TRANSITIONS if t["trigger"] not in ("fail", "retry_after_failure")}
FAILPOINTS = sorted({*POINTS, *(f"{p.value}.{w}" for p in ACTIVE for w in PHASE_POINTS)})
MAX_BOOT_ATTEMPTS = 3
# (from, to) pairs the lifecycle allows, plus the "resumed" entry a run cut short adds in place.
ALLOWED = {(str(s.value), str(t["dest"].value)) for t in TRANSITIONS
           for s in (t["source"] if isinstance(t["source"], list) else [t["source"]])}


class PowerCut(BaseException):
    """Stands for SIGKILL at a failpoint: not an Exception, so nothing in the agent handles it."""



class Boots(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="azprov-stateful-"))
        uuid = self.tmp / "product_uuid"
        uuid.write_text("11111111-2222-3333-4444-555555555555\n")
        (self.tmp / "efi").mkdir()
        self.cfg = Config(fabric=FabricConfig(network_timeout=2.0, wireserver_timeout=2.0, imds_timeout=2.0),
                          paths=PathsConfig(state_dir=str(self.tmp / "state"), root=str(self.tmp)),
                          identity=IdentityConfig(product_uuid_path=str(uuid), efi_path=str(self.tmp / "efi")),
                          kvp=KvpConfig(enabled=False), agent=AgentConfig(max_boot_attempts=MAX_BOOT_ATTEMPTS))
        self.terminal: Record | None = None  # the record once it is terminal: it must never change again
        self.outcomes: list[str] = []
        self.armed: tuple[str, int] | None = None
        self.hits: dict[str, int] = {}
        self.in_hypothesis = True  # hypothesis.event works only inside a Hypothesis test

    def event(self, text: str) -> None:
        if self.in_hypothesis:
            hypothesis.event(text)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the fakes: steps, failure report, failpoints ------------------------------------------------------

    def failpoint(self, name: str) -> None:
        self.hits[name] = self.hits.get(name, 0) + 1
        if self.armed is not None and self.armed == (name, self.hits[name]):
            self.event(f"power cut at {name}")
            raise PowerCut(name)

    def step(self, phase: Phase) -> runner.Step:
        def work(ctx: Context, record: Record) -> Outcome:
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if outcome == "retry":
                self.event("retry path")
                raise FabricError("busy", retryable=True)
            if outcome == "fatal":
                raise AgentError("rejected")
            if phase is Phase.REPORTING:
                self.failpoint("reporting.after_post")
            return Outcome(SUCCESS[phase])
        return work

    def report_failure(self, ctx: Context, record: Record, error: AgentError) -> bool:
        return True

    def boot(self, outcomes: list[str], armed: tuple[str, int] | None) -> Phase | None:
        self.outcomes, self.armed, self.hits = list(outcomes), armed, {}
        patched = [statemachine.runner, statemachine.persistence]
        saved = [m.failpoint for m in patched]  # type: ignore[attr-defined]
        for module in patched:
            module.failpoint = self.failpoint  # type: ignore[attr-defined]
        clock = FakeClock()
        try:
            return runner.run(Context(self.cfg, clock=clock, sleep=clock.sleep),
                              {p: self.step(p) for p in ACTIVE}, self.report_failure)
        except PowerCut:
            return None
        finally:
            for module, original in zip(patched, saved):
                module.failpoint = original  # type: ignore[attr-defined]

    def on_disk(self) -> Record | None:
        return persistence.load(self.cfg.state_dir / persistence.STATE_FILE)

    # ---- rules -------------------------------------------------------------------------------------------

    @rule(outcomes=st.lists(st.sampled_from(["ok", "ok", "retry", "fatal"]), max_size=6),
          armed=st.none() | st.tuples(st.sampled_from(FAILPOINTS), st.sampled_from([1, 1, 1, 2, 3])))
    def boot_with_faults(self, outcomes: list[str], armed: tuple[str, int] | None) -> None:
        before = self.on_disk()
        ended = self.boot(outcomes, armed)
        after = self.on_disk()
        if ended is not None:
            assert after is None or after.state is ended or ended is Phase.DONE and after.state is Phase.DONE
            if armed is not None:
                self.event("failpoint armed but not reached")
        self.check_terminal(before, after)

    @rule()
    def boot_with_a_healthy_fabric(self) -> None:
        before = self.on_disk()
        ended = self.boot([], None)
        after = self.on_disk()
        spent = before is not None and is_terminal(before.state, before.boot_attempts, MAX_BOOT_ATTEMPTS)
        if spent:
            assert before is not None
            assert ended is before.state
        else:
            assert ended is Phase.DONE and after is not None and after.state is Phase.DONE
        self.check_terminal(before, after)

    def check_terminal(self, before: Record | None, after: Record | None) -> None:
        if self.terminal is not None:
            assert after == self.terminal, "a terminal record changed"
        elif after is not None and is_terminal(after.state, after.boot_attempts, MAX_BOOT_ATTEMPTS):
            self.terminal = after

    # ---- invariants --------------------------------------------------------------------------------------

    @invariant()
    def the_record_on_disk_tells_a_path_the_lifecycle_allows(self) -> None:
        record = self.on_disk()
        if record is None:
            return
        states = [str(h["state"]) for h in record.history if h.get("event") != "resumed"]
        assert states[0] == "network_wait"
        for a, b in zip(states, states[1:]):
            assert (a, b) in ALLOWED, (a, b, record.history)
        assert states[-1] == record.state.value
        assert record.boot_attempts <= MAX_BOOT_ATTEMPTS and record.runs >= 1


Boots.TestCase.settings = settings(max_examples=examples(40), stateful_step_count=6, deadline=None,
                                   suppress_health_check=list(hypothesis.HealthCheck))
TestBoots = Boots.TestCase


def test_every_failpoint_is_listed() -> None:
    """The stateful test arms every failpoint the runner, persistence and reporting pass through."""
    names: set[str] = set()
    assert len(FAILPOINTS) == len(POINTS) + len(ACTIVE) * len(PHASE_POINTS)
    for name in FAILPOINTS:
        names.add(name.split(".")[0])
    assert names >= {"persist", "reporting", "fail", *(p.value for p in ACTIVE)}



@pytest.mark.parametrize("point", FAILPOINTS)
def test_a_power_cut_at_each_failpoint_is_survived(point: str) -> None:
    """Every failpoint, deterministically: the cut happens there, and the next boot ends DONE."""
    boots = Boots()
    boots.in_hypothesis = False
    try:
        outcomes = ["ok", "fatal"] if point.startswith("fail.") else []  # fail.*: GOALSTATE fails
        assert boots.boot(outcomes, (point, 1)) is None, f"{point} was not reached"
        assert boots.boot([], None) is Phase.DONE
        record = boots.on_disk()
        assert record is not None and record.state is Phase.DONE
    finally:
        boots.teardown()
