"""GOALSTATE: fetch the goal state from the WireServer and keep the three ids the health report needs.

`parse_goal_state` is pure and raises only `GoalStateError` (or its retryable child when the fabric has
not yet filled in the RoleInstance, which it does while it is still preparing the VM).
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


# A goal state this process fetched less than this long ago is what "fetched right before the POST" means:
# GOALSTATE's own fetch is milliseconds old when REPORTING posts the Ready, and a 410 still refetches.
FRESH_S = 1.0


def take_fresh(ctx: Context) -> GoalState | None:
    """The goal state fetched a moment ago by this process, once; None when there is none or it is older
    than FRESH_S. Saves the REPORTING phase a second GET of what GOALSTATE has just read."""
    cached, ctx.last_goal_state = ctx.last_goal_state, None
    if cached is None or ctx.clock() - cached[0] > FRESH_S:
        return None
    gs: GoalState = cached[1]
    return gs


def fetch(ctx: Context) -> GoalState:
    body = ctx.wire().get_goal_state()
    try:
        gs = parse_goal_state(body)
        ctx.last_goal_state = (ctx.clock(), gs)
        return gs
    except GoalStateError as e:
        # An answer we cannot read (truncated, an intermediary's HTML error page, worse) says nothing
        # lasting about the WireServer: ask again until the phase's budget decides, as for a 5xx. Failing
        # at once would lose the VM to one glitch.
        e.retryable = True
        raise


def step(ctx: Context, record: Record) -> Outcome:
    gs = fetch(ctx)
    log.info("goal state received", extra=fields(incarnation=gs.incarnation, container_id=gs.container_id,
                                                 instance_id=gs.instance_id))
    return Outcome("goal_state_received", gs._asdict())
