"""The provisioning lifecycle as data: phases, the transitions between them, and the `transitions` Machine.

No work happens in callbacks: when a callback raises after the state changed, `transitions` keeps the new
state and rolls nothing back, so a resumed boot could not tell whether the work happened. The runner does
the work first, then fires the trigger, and persists from the one `after_state_change` hook.
"""

from __future__ import annotations

from typing import Any, Callable

from transitions import Machine

from statemachine.phase import ACTIVE, TERMINAL, Phase

__all__ = ["ACTIVE", "TERMINAL", "TRANSITIONS", "Agent", "Phase", "build_machine"]

# The whole lifecycle on one screen. Terminal phases have no way out; a FAILED record is restarted by the
# runner building a fresh machine at NETWORK_WAIT (bounded by agent.max_boot_attempts), not by a transition.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "network_up", "source": Phase.NETWORK_WAIT, "dest": Phase.GOALSTATE},
    {"trigger": "goal_state_received", "source": Phase.GOALSTATE, "dest": Phase.REPORTING},
    {"trigger": "reported", "source": Phase.REPORTING, "dest": Phase.CONFIGURING},
    {"trigger": "configured", "source": Phase.CONFIGURING, "dest": Phase.DONE},
    {"trigger": "fail", "source": ACTIVE, "dest": Phase.FAILED},
]

# The event each active phase fires when its work succeeded.
SUCCESS_EVENT = {t["source"]: t["trigger"] for t in TRANSITIONS if t["trigger"] != "fail"}


class Agent:
    """The model; `transitions.Machine` binds `state` and `trigger` on it."""

    state: Phase

    def trigger(self, name: str) -> bool:  # pragma: no cover - replaced by transitions
        raise RuntimeError("bound by transitions.Machine")


def build_machine(agent: Agent, initial: Phase, on_change: Callable[[], None]) -> Machine:
    return Machine(
        model=agent,
        states=Phase,
        transitions=TRANSITIONS,
        initial=initial,
        auto_transitions=False,
        model_override=True,
        after_state_change=on_change,
    )
