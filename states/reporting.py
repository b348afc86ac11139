"""REPORTING: tell the platform the VM is Ready (or, from the failure path, NotReady/ProvisioningFailed).

Always posts with a fresh goal state (a stale incarnation earns 410 Gone): the one GOALSTATE fetched
milliseconds before, or a new GET when that is over a second old or the POST is a retry; on 410 it fetches
again and re-posts at once. Ready counts as reported only after the WireServer's 200: a marker
written earlier would let a crash in between leave a VM that never reports Ready.
The bodies come from `statemachine.health`. With `fabric.health_protocol = "provisioning"` the report goes as
JSON to `/provisioning/health` instead; it names no goal state, so none is fetched. Either way the PROVISIONING_REPORT
KVP record is written before the POST: the host harvests KVP when the report arrives.
"""

from __future__ import annotations

import logging

from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, FabricError, GoneError
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
from statemachine.timeutil import utc_now
from states import goalstate
from states.goalstate import GoalState

log = logging.getLogger(__name__)

MAX_GONE = 5  # refetch-and-repost rounds after 410 before handing the problem to the retry policy


def post(ctx: Context, state: str, substatus: str | None = None,
         description: str | None = None) -> GoalState | None:
    """Fresh goal state (GOALSTATE's when under a second old), then POST; on 410 fetch and post again.
    Returns the goal state the 200 was for (None for the JSON protocol, which names none)."""
    if ctx.config.fabric.health_protocol == "provisioning":  # errors go to the runner's retry policy
        ctx.wire().post_provisioning_health(render_provisioning_health(state, substatus, description))
        return None
    fresh = goalstate.take_fresh(ctx)  # GOALSTATE's, milliseconds old: no second GET for the first POST
    for _ in range(MAX_GONE):
        gs = fresh or goalstate.fetch(ctx)
        fresh = None
        report = HealthReport(gs.incarnation, gs.container_id, gs.instance_id, state, substatus, description)
        try:
            ctx.wire().post_health(render_health(report))
            return gs
        except GoneError:
            log.info("health report refused as stale (410); refetching the goal state",
                     extra=fields(incarnation=gs.incarnation))
    raise FabricError("health report kept being refused as stale (410)", retryable=True, rounds=MAX_GONE)


def step(ctx: Context, record: Record) -> Outcome:
    ctx.events().vm_id = record.vm_id
    ctx.events().report(success_report(record.vm_id, utc_now()))  # before the POST, once per run
    gs = post(ctx, "Ready")
    failpoint("reporting.after_post")  # the one crash window that may cause a duplicate Ready
    log.info("reported Ready", extra=fields(incarnation=gs.incarnation if gs else None))
    return Outcome("reported", {**(gs._asdict() if gs else {}), "reported_ready_at": utc_now()})


def report_failure(ctx: Context, record: Record, error: AgentError) -> bool:
    """Post NotReady/ProvisioningFailed so the platform fails fast. True when the fabric took it."""
    # The runner stamped last_error when it wrote the KVP report: the same stamp gives the same text.
    description = failure_description(error, record.vm_id, str((record.last_error or {}).get("at") or utc_now()))
    try:
        post(ctx, "NotReady", "ProvisioningFailed", description)
    except AgentError as e:
        log.warning("could not report the failure to the fabric", extra=fields(reason=e.reason))
        return False
    log.info("reported NotReady/ProvisioningFailed", extra=fields(description=description))
    return True
