from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from transitions import MachineError

from statemachine.machine import ACTIVE, SUCCESS_EVENT, TERMINAL, TRANSITIONS, Agent, Phase, build_machine

EVENTS = sorted({t["trigger"] for t in TRANSITIONS})


def machine_at(phase: Phase) -> tuple[Agent, list[Phase]]:
    agent, seen = Agent(), []
    build_machine(agent, phase, on_change=lambda: seen.append(agent.state))
    return agent, seen


def test_happy_path_in_order() -> None:
    agent, seen = machine_at(Phase.NETWORK_WAIT)
    for event in ("network_up", "goal_state_received", "reported", "configured"):
        agent.trigger(event)
    assert seen == [Phase.GOALSTATE, Phase.REPORTING, Phase.CONFIGURING, Phase.DONE]


@pytest.mark.parametrize("phase", ACTIVE)
def test_failed_is_reachable_from_every_active_phase(phase: Phase) -> None:
    agent, seen = machine_at(phase)
    agent.trigger("fail")
    assert agent.state is Phase.FAILED and seen == [Phase.FAILED]


@pytest.mark.parametrize("phase", sorted(TERMINAL, key=lambda p: p.value))
@pytest.mark.parametrize("event", EVENTS)
def test_terminal_phases_have_no_way_out(phase: Phase, event: str) -> None:
    agent, seen = machine_at(phase)
    with pytest.raises(MachineError):
        agent.trigger(event)
    assert agent.state is phase and seen == []


def test_no_auto_transitions() -> None:
    agent, _ = machine_at(Phase.NETWORK_WAIT)
    assert not any(name.startswith("to_") for name in dir(agent))


def test_every_active_phase_has_exactly_one_success_event() -> None:
    assert set(SUCCESS_EVENT) == set(ACTIVE)


class RandomTriggers(RuleBasedStateMachine):
    """Random events never leave the Phase enum, never leave a terminal phase, and the change hook
    always sees what the model holds."""

    def __init__(self) -> None:
        super().__init__()
        self.agent, self.seen = machine_at(Phase.NETWORK_WAIT)
        self.terminal_at: Phase | None = None

    @rule(event=st.sampled_from(EVENTS))
    def fire(self, event: str) -> None:
        before = self.agent.state
        try:
            self.agent.trigger(event)
        except MachineError:
            assert self.agent.state is before
        if before in TERMINAL:
            assert self.agent.state is before

    @invariant()
    def state_is_a_phase(self) -> None:
        assert isinstance(self.agent.state, Phase)

    @invariant()
    def hook_matches_model(self) -> None:
        if self.seen:
            assert self.seen[-1] is self.agent.state


TestRandomTriggers = RandomTriggers.TestCase
