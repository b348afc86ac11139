"""The lifecycle table: every path through it, the guarded retry of a failure, and what ends a run."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from transitions import MachineError

from statemachine import machine
from statemachine.machine import ACTIVE, PHASES, TRANSITIONS, Agent, Phase, build_machine, ends_run, fire, is_terminal

EVENTS = sorted({t["trigger"] for t in TRANSITIONS})


def machine_at(phase: Phase, boot_attempts: int = 1, max_boot_attempts: int = 3) -> tuple[Agent, object, list[Phase]]:
    agent, seen = Agent(boot_attempts, max_boot_attempts), []
    m = build_machine(agent, phase, on_change=lambda: seen.append(agent.state))
    return agent, m, seen


def test_happy_path_in_order() -> None:
    agent, m, seen = machine_at(Phase.NETWORK_WAIT)
    for event in ("network_up", "goal_state_received", "reported", "configured"):
        assert fire(m, agent, event)
    assert seen == [Phase.GOALSTATE, Phase.REPORTING, Phase.CONFIGURING, Phase.DONE]


@pytest.mark.parametrize("phase", ACTIVE)
def test_failed_is_reachable_from_every_active_phase(phase: Phase) -> None:
    agent, m, seen = machine_at(phase)
    fire(m, agent, "fail")
    assert agent.state is Phase.FAILED and seen == [Phase.FAILED]


def test_a_failure_is_retried_while_boot_attempts_are_left() -> None:
    agent, m, seen = machine_at(Phase.FAILED, boot_attempts=2, max_boot_attempts=3)
    assert fire(m, agent, "retry_after_failure")
    assert agent.state is Phase.NETWORK_WAIT and seen == [Phase.NETWORK_WAIT]


@pytest.mark.parametrize("used", [3, 4])
def test_a_failure_with_every_attempt_used_stays_failed(used: int) -> None:
    agent, m, seen = machine_at(Phase.FAILED, boot_attempts=used, max_boot_attempts=3)
    assert not fire(m, agent, "retry_after_failure")
    assert agent.state is Phase.FAILED and seen == []
    assert is_terminal(Phase.FAILED, used, 3)


@pytest.mark.parametrize("event", EVENTS)
def test_done_has_no_way_out(event: str) -> None:
    agent, m, seen = machine_at(Phase.DONE)
    with pytest.raises(MachineError):
        fire(m, agent, event)
    assert agent.state is Phase.DONE and seen == []


def test_only_done_and_failed_end_a_run_and_only_done_or_spent_failed_are_terminal() -> None:
    assert [p for p in Phase if ends_run(p)] == [Phase.DONE, Phase.FAILED]
    assert is_terminal(Phase.DONE, 1, 3) and not is_terminal(Phase.FAILED, 1, 3)
    assert not any(is_terminal(p, 99, 3) for p in ACTIVE)


def test_no_auto_transitions() -> None:
    agent, _, _ = machine_at(Phase.NETWORK_WAIT)
    assert not any(name.startswith("to_") for name in dir(agent))


def test_every_active_phase_has_its_work_budget_and_exactly_one_success_event() -> None:
    assert set(PHASES) == set(ACTIVE)
    success = [t["source"] for t in TRANSITIONS if t["trigger"] not in ("fail", "retry_after_failure")]
    assert sorted(success, key=lambda p: p.value) == sorted(ACTIVE, key=lambda p: p.value)
    for spec in PHASES.values():
        assert spec.budget_key.endswith("_timeout") and spec.step.startswith("states.")


def test_the_machine_binds_triggers_itself() -> None:
    """No `model_override` and no stub on the model: both break with Debian 12's transitions 0.9.0, which
    lacks the option and refuses to bind `trigger` over an attribute that is already there."""
    assert "model_override" not in inspect.getsource(machine.build_machine)
    assert "trigger" not in vars(Agent)
    agent, _, _ = machine_at(Phase.NETWORK_WAIT)
    assert agent.trigger("network_up") and agent.state is Phase.GOALSTATE  # type: ignore[attr-defined]


class RandomTriggers(RuleBasedStateMachine):
    """Random events never leave the Phase enum, never leave DONE or a spent FAILED, and the change hook
    always sees what the model holds."""

    def __init__(self) -> None:
        super().__init__()
        self.agent, self.machine, self.seen = machine_at(Phase.NETWORK_WAIT, boot_attempts=1, max_boot_attempts=2)

    @rule(event=st.sampled_from(EVENTS))
    def fire(self, event: str) -> None:
        before = self.agent.state
        terminal = is_terminal(before, self.agent.boot_attempts, 2)
        try:
            moved = fire(self.machine, self.agent, event)
        except MachineError:
            assert self.agent.state is before
            return
        if terminal:
            assert self.agent.state is before and not moved
        if event == "retry_after_failure" and moved:
            self.agent.boot_attempts += 1  # what the runner records with the transition

    @invariant()
    def state_is_a_phase(self) -> None:
        assert isinstance(self.agent.state, Phase)

    @invariant()
    def hook_matches_model(self) -> None:
        if self.seen:
            assert self.seen[-1] is self.agent.state


TestRandomTriggers = RandomTriggers.TestCase
