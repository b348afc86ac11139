"""GOALSTATE: fetch the goal state from the WireServer and keep the three ids the health report needs.

`parse_goal_state` is pure and raises only `GoalStateError` (retryable: an unreadable answer says nothing
lasting), or its child when the fabric has not yet filled in the RoleInstance while it prepares the VM.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from statemachine.context import Context, Outcome
from statemachine.errors import GoalStateError, IncompleteGoalStateError
from statemachine.log import fields
from statemachine.persistence import Record
from states import xmlutil

log = logging.getLogger(__name__)
WHAT = "goal state"


class GoalState(NamedTuple):
    incarnation: str
    container_id: str
    instance_id: str


def parse_goal_state(body: bytes) -> GoalState:
    root = xmlutil.parse(body, WHAT, GoalStateError)
    if xmlutil.local(root).lower() != "goalstate":  # azure-init's old tests even spell it <Goalstate>
        raise GoalStateError("goal state has an unexpected root element", root=xmlutil.local(root)[:64])
    incarnation = xmlutil.text_of(root, "Incarnation", WHAT, GoalStateError)
    container = xmlutil.only_child(root, "Container", WHAT, GoalStateError)
    assert container is not None
    container_id = xmlutil.text_of(container, "ContainerId", WHAT, GoalStateError)
    role_list = xmlutil.only_child(container, "RoleInstanceList", WHAT, GoalStateError, required=False)
    instances = list(xmlutil.children(role_list, "RoleInstance")) if role_list is not None else []
    if not instances:
        raise IncompleteGoalStateError("goal state has no RoleInstance yet", incarnation=incarnation)
    instance_id = xmlutil.text_of(instances[0], "InstanceId", WHAT, GoalStateError)  # the first one counts
    return GoalState(incarnation, container_id, instance_id)


# How long a goal state this process fetched stays good for a health POST. GOALSTATE's own fetch is
# milliseconds old when REPORTING posts the Ready; a POST retried after 429/503 reuses it rather than adding
# a GET to a throttled WireServer. A stale one costs nothing worse than a 410, which always refetches.
FRESH_S = 10.0


def recent(ctx: Context) -> GoalState | None:
    """The goal state fetched by this run less than FRESH_S ago, if any."""
    cached = ctx.run.goal_state
    if cached is None or ctx.clock() - cached[0] > FRESH_S:
        return None
    return cached[1]


def forget(ctx: Context) -> None:
    """The goal state changed (410 Gone): the next POST fetches it anew."""
    ctx.run.goal_state = None


def fetch(ctx: Context) -> GoalState:
    gs = parse_goal_state(ctx.wire().get_goal_state())
    ctx.run.goal_state = (ctx.clock(), gs)
    return gs


def step(ctx: Context, record: Record) -> Outcome:
    gs = fetch(ctx)
    log.info("goal state received", extra=fields(incarnation=gs.incarnation, container_id=gs.container_id,
                                                 instance_id=gs.instance_id))
    return Outcome("goal_state_received", gs._asdict())
