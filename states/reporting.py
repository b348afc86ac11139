"""REPORTING: tell the platform the VM is Ready (or, from the failure path, NotReady/ProvisioningFailed).

Posts with the goal state GOALSTATE fetched (a new GET when that is older than `goalstate.FRESH_S`); a 410
(a stale incarnation) drops it, and the runner's retry loop posts again at once with a fresh one. Ready
counts as reported only after the WireServer's 200: a marker written earlier would let a crash in between
leave a VM that never reports Ready.
The bodies come from `statemachine.health`. With `fabric.health_protocol = "provisioning"` the report goes
as JSON to `/provisioning/health` instead; it names no goal state, so none is fetched. Either way the
PROVISIONING_REPORT KVP record is written before the POST: the host harvests KVP when the report arrives.
"""

from __future__ import annotations

import logging

from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, GoneError
from statemachine.failpoints import failpoint
from statemachine.health import (
    HealthReport,
    failure_description,
    render_health,
    render_provisioning_health,
    success_report,
)
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.text import utc_now
from states import goalstate
from states.goalstate import GoalState

log = logging.getLogger(__name__)


def post(ctx: Context, state: str, substatus: str | None = None,
         description: str | None = None) -> GoalState | None:
    """POST the health report for the goal state fetched a moment ago (or a new one). Returns the goal
    state the 200 was for (None for the JSON protocol, which names none). Errors go to the runner's retry
    loop; a 410 first drops the goal state, so the retry, made at once, fetches the new one."""
    if ctx.config.fabric.health_protocol == "provisioning":
        ctx.wire().post_provisioning_health(render_provisioning_health(state, substatus, description))
        return None
    gs = goalstate.recent(ctx) or goalstate.fetch(ctx)
    report = HealthReport(gs.incarnation, gs.container_id, gs.instance_id, state, substatus, description)
    try:
        ctx.wire().post_health(render_health(report))
    except GoneError:
        log.info("health report refused as stale (410); refetching the goal state",
                 extra=fields(incarnation=gs.incarnation))
        goalstate.forget(ctx)
        raise
    return gs


def step(ctx: Context, record: Record) -> Outcome:
    ctx.events().vm_id = record.vm_id
    ctx.events().report(success_report(record.vm_id, utc_now()))  # before the POST: KVP is harvested on it
    gs = post(ctx, "Ready")
    failpoint("reporting.after_post")  # the one crash window that may cause a duplicate Ready
    log.info("reported Ready", extra=fields(incarnation=gs.incarnation if gs else None))
    return Outcome("reported", {**(gs._asdict() if gs else {}), "reported_ready_at": utc_now()})


def report_failure(ctx: Context, record: Record, error: AgentError) -> bool:
    """Post NotReady/ProvisioningFailed so the platform fails fast. True when the fabric took it; errors
    go to the runner's retry loop."""
    # The runner stamped last_error when it wrote the KVP report: the same stamp gives the same text.
    description = failure_description(error, record.vm_id, str((record.last_error or {}).get("at") or utc_now()))
    post(ctx, "NotReady", "ProvisioningFailed", description)
    log.info("reported NotReady/ProvisioningFailed", extra=fields(description=description))
    return True
