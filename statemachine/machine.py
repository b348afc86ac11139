"""The provisioning lifecycle as data: the transitions, what each phase does and how long it may try.

    NETWORK_WAIT --network_up--> GOALSTATE --goal_state_received--> REPORTING --reported--> CONFIGURING
    CONFIGURING --configured--> DONE
    any active phase --fail--> FAILED
    FAILED --retry_after_failure [boot attempts left]--> NETWORK_WAIT   (the next run, never the same one)

No work happens in callbacks: when a callback raises after the state changed, `transitions` keeps the new
state and rolls nothing back, so a resumed boot could not tell whether the work happened. The runner does
the work first, then fires the trigger, and persists from the one `after_state_change` hook. A run ends at
DONE or FAILED; only DONE, and FAILED with every boot attempt used, are terminal for good.
`transitions` is imported only when a machine is built: reading a record needs the phase names alone, and a
provisioned VM's later boots never need it.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

from statemachine import retry


class Phase(enum.Enum):
    """The phases of provisioning: the names a record holds."""

    NETWORK_WAIT = "network_wait"
    GOALSTATE = "goalstate"
    REPORTING = "reporting"
    CONFIGURING = "configuring"
    DONE = "done"
    FAILED = "failed"


# The phases a run ends in. DONE never changes again; FAILED does while boot attempts are left (`is_terminal`).
TERMINAL = frozenset({Phase.DONE, Phase.FAILED})
ACTIVE = [p for p in Phase if p not in TERMINAL]


TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "network_up", "source": Phase.NETWORK_WAIT, "dest": Phase.GOALSTATE},
    {"trigger": "goal_state_received", "source": Phase.GOALSTATE, "dest": Phase.REPORTING},
    {"trigger": "reported", "source": Phase.REPORTING, "dest": Phase.CONFIGURING},
    {"trigger": "configured", "source": Phase.CONFIGURING, "dest": Phase.DONE},
    {"trigger": "fail", "source": ACTIVE, "dest": Phase.FAILED},
    {"trigger": "retry_after_failure", "source": Phase.FAILED, "dest": Phase.NETWORK_WAIT,
     "conditions": "has_boot_attempts_left"},
]


class PhaseSpec(NamedTuple):
    step: str  # the module in `states` whose `step(ctx, record)` does the phase's work
    budget_key: str  # `fabric.<key>`: the seconds the phase may keep retrying
    policy: retry.RetryPolicy  # the backoff for errors that name no pace of their own
    exhausted: str  # why the phase gave up, naming the service and the budget: read in the portal


PHASES: dict[Phase, PhaseSpec] = {
    Phase.NETWORK_WAIT: PhaseSpec("states.network_wait", "network_timeout", retry.CONNECT,
                                  "WireServer did not accept a connection within fabric.network_timeout"),
    Phase.GOALSTATE: PhaseSpec("states.goalstate", "wireserver_timeout", retry.WIRESERVER,
                               "WireServer gave no usable goal state within fabric.wireserver_timeout"),
    Phase.REPORTING: PhaseSpec("states.reporting", "wireserver_timeout", retry.WIRESERVER,
                               "WireServer did not accept the health report within fabric.wireserver_timeout"),
    Phase.CONFIGURING: PhaseSpec("states.configuring", "imds_timeout", retry.IMDS,
                                 "IMDS gave no usable instance metadata within fabric.imds_timeout"),
}
FAILURE_REPORT_BUDGET = 30.0  # telling the platform of a failure: at most this, never over wireserver_timeout


def ends_run(phase: Phase) -> bool:
    """A run stops at DONE or FAILED; a FAILED record is retried by the next run, not this one."""
    return phase not in ACTIVE


def is_terminal(phase: Phase, boot_attempts: int, max_boot_attempts: int) -> bool:
    """Nothing will ever change this record: DONE, or FAILED with every boot attempt used."""
    return phase is Phase.DONE or (phase is Phase.FAILED and boot_attempts >= max_boot_attempts)


class Agent:
    """The model `transitions.Machine` drives: it binds `state` and the triggers on it."""

    state: Phase

    def __init__(self, boot_attempts: int = 1, max_boot_attempts: int = 1) -> None:
        self.boot_attempts = boot_attempts
        self.max_boot_attempts = max_boot_attempts

    def has_boot_attempts_left(self) -> bool:
        return self.boot_attempts < self.max_boot_attempts


def build_machine(agent: Agent, initial: Phase, on_change: Callable[[], None]) -> Any:
    from transitions import Machine

    return Machine(model=agent, states=Phase, transitions=TRANSITIONS, initial=initial,
                   auto_transitions=False, after_state_change=on_change)


def fire(machine: Any, agent: Agent, event: str) -> bool:
    """Fire `event` on `agent`; False when its condition did not hold. Raises `transitions.MachineError`
    when the event is not valid in the current phase."""
    return bool(machine.events[event].trigger(agent))
