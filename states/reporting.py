"""REPORTING: tell the platform the VM is Ready (or, from the failure path, NotReady/ProvisioningFailed).

Posts with the goal state GOALSTATE fetched (a new GET when that is older than `goalstate.FRESH_S`); a 410
(a stale incarnation) drops it, and the runner's retry loop posts again at once with a fresh one. Ready
counts as reported only after the WireServer's 200: a marker written earlier would let a crash in between
leave a VM that never reports Ready.
The health XML is built with lxml from a pure function; `parse_health` exists for tests and the fake fabric.
With `fabric.health_protocol = "provisioning"` the report goes as JSON to `/provisioning/health` instead
(`states.reporting_json`); it names no goal state, so none is fetched. Either way the PROVISIONING_REPORT
KVP record is written before the POST: the host harvests KVP when the report arrives.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from lxml import etree

from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, GoalStateError, GoneError
from statemachine.failpoints import failpoint
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.report import MAX_DESCRIPTION as MAX_DESCRIPTION  # re-exported: callers import it from here
from statemachine.report import failure_report, success_report
from statemachine.timeutil import utc_now
from states import goalstate, xmlutil
from states.goalstate import GoalState

log = logging.getLogger(__name__)

class HealthReport(NamedTuple):
    incarnation: str
    container_id: str
    instance_id: str
    state: str  # "Ready" or "NotReady"
    substatus: str | None = None
    description: str | None = None


def render_health(report: HealthReport) -> bytes:
    """The health document for the WireServer. Pure; XML-escaping is lxml's job, never a template's."""
    health = etree.Element("Health")
    etree.SubElement(health, "GoalStateIncarnation").text = report.incarnation
    container = etree.SubElement(health, "Container")
    etree.SubElement(container, "ContainerId").text = report.container_id
    role = etree.SubElement(etree.SubElement(container, "RoleInstanceList"), "Role")
    etree.SubElement(role, "InstanceId").text = report.instance_id
    role_health = etree.SubElement(role, "Health")
    etree.SubElement(role_health, "State").text = report.state
    if report.substatus is not None:
        details = etree.SubElement(role_health, "Details")
        etree.SubElement(details, "SubStatus").text = report.substatus
        etree.SubElement(details, "Description").text = report.description or ""
    return bytes(etree.tostring(health, xml_declaration=True, encoding="utf-8"))


def parse_health(body: bytes) -> HealthReport:
    """Read a health document back (any of the peers' layouts). Raises only GoalStateError."""
    what = "health report"
    root = xmlutil.parse(body, what, GoalStateError)
    if xmlutil.local(root) != "Health":
        raise GoalStateError("health report has an unexpected root element", root=xmlutil.local(root)[:64])
    container = xmlutil.only_child(root, "Container", what, GoalStateError)
    assert container is not None
    role_list = xmlutil.only_child(container, "RoleInstanceList", what, GoalStateError)
    assert role_list is not None
    role = xmlutil.only_child(role_list, "Role", what, GoalStateError)
    assert role is not None
    role_health = xmlutil.only_child(role, "Health", what, GoalStateError)
    assert role_health is not None
    details = xmlutil.only_child(role_health, "Details", what, GoalStateError, required=False)
    substatus = description = None
    if details is not None:
        substatus = xmlutil.text_of(details, "SubStatus", what, GoalStateError)
        desc = xmlutil.only_child(details, "Description", what, GoalStateError, required=False)
        description = (desc.text or "") if desc is not None else None
    return HealthReport(
        incarnation=xmlutil.text_of(root, "GoalStateIncarnation", what, GoalStateError),
        container_id=xmlutil.text_of(container, "ContainerId", what, GoalStateError),
        instance_id=xmlutil.text_of(role, "InstanceId", what, GoalStateError),
        state=xmlutil.text_of(role_health, "State", what, GoalStateError),
        substatus=substatus,
        description=description,
    )


def failure_description(error: AgentError, vm_id: str | None, timestamp: str) -> str:
    """The pipe-delimited report (statemachine.report), at most 512 characters: the same text as the KVP
    PROVISIONING_REPORT record the runner wrote for this failure."""
    return failure_report(error.reason, error.supporting_data, vm_id, timestamp)


def post(ctx: Context, state: str, substatus: str | None = None,
         description: str | None = None) -> GoalState | None:
    """POST the health report for the goal state fetched a moment ago (or a new one). Returns the goal
    state the 200 was for (None for the JSON protocol, which names none). Errors go to the runner's retry
    loop; a 410 first drops the goal state, so the retry, made at once, fetches the new one."""
    if ctx.config.fabric.health_protocol == "provisioning":
        from states import reporting_json  # only for this protocol: not on the default path's start-up

        ctx.wire().post_provisioning_health(reporting_json.render_provisioning_health(state, substatus, description))
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
