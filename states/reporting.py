"""REPORTING: tell the platform the VM is Ready (or, from the failure path, NotReady/ProvisioningFailed).

Always fetches a fresh goal state right before the POST (a stale incarnation earns 410 Gone), and on 410
fetches again and re-posts at once. Ready counts as reported only after the WireServer's 200: a marker
written earlier would let a crash in between leave a VM that never reports Ready.
The health XML is built with lxml from a pure function; `parse_health` exists for tests and the fake fabric.
"""

from __future__ import annotations

import dataclasses
import logging

from lxml import etree

from statemachine import AGENT_NAME, __version__
from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, FabricError, GoalStateError, GoneError
from statemachine.failpoints import failpoint
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.timeutil import utc_now
from states import goalstate, xmlutil
from states.goalstate import GoalState

log = logging.getLogger(__name__)

MAX_GONE = 5  # refetch-and-repost rounds after 410 before handing the problem to the retry policy
MAX_DESCRIPTION = 512
DOCUMENTATION_URL = "https://aka.ms/linuxprovisioningerror"


@dataclasses.dataclass(frozen=True)
class HealthReport:
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


def _clean(value: object) -> str:
    # The description is a |-separated list of key=value pairs: keep values from breaking it apart.
    return " ".join(str(value).replace("|", "/").split())


def failure_description(error: AgentError, vm_id: str | None, timestamp: str) -> str:
    """cloud-init's pipe-delimited report, cut to 512 characters by shortening the reason, never the ids."""
    data = ", ".join(f"{k}={_clean(v)}" for k, v in sorted(error.supporting_data.items()))
    reason = _clean(error.reason + (f" ({data})" if data else ""))
    head = "result=error|reason="
    tail = (f"|agent={AGENT_NAME}/{__version__}|vm_id={_clean(vm_id or 'unknown')}|timestamp={timestamp}"
            f"|documentation_url={DOCUMENTATION_URL}")
    room = MAX_DESCRIPTION - len(head) - len(tail)
    if len(reason) > room:
        reason = reason[: max(room - 3, 0)] + "..."
    return head + reason + tail


def post(ctx: Context, state: str, substatus: str | None = None, description: str | None = None) -> GoalState:
    """Fresh goal state, then POST; on 410 do both again. Returns the goal state the 200 was for."""
    for _ in range(MAX_GONE):
        gs = goalstate.fetch(ctx)
        report = HealthReport(gs.incarnation, gs.container_id, gs.instance_id, state, substatus, description)
        try:
            ctx.wire().post_health(render_health(report))
            return gs
        except GoneError:
            log.info("health report refused as stale (410); refetching the goal state",
                     extra=fields(incarnation=gs.incarnation))
    raise FabricError("health report kept being refused as stale (410)", retryable=True, rounds=MAX_GONE)


def step(ctx: Context, record: Record) -> Outcome:
    gs = post(ctx, "Ready")
    failpoint("reporting.after_post")  # the one crash window that may cause a duplicate Ready
    log.info("reported Ready", extra=fields(incarnation=gs.incarnation))
    return Outcome("reported", {**dataclasses.asdict(gs), "reported_ready_at": utc_now()})


def report_failure(ctx: Context, record: Record, error: AgentError) -> bool:
    """Post NotReady/ProvisioningFailed so the platform fails fast. True when the fabric took it."""
    description = failure_description(error, record.vm_id, utc_now())
    try:
        post(ctx, "NotReady", "ProvisioningFailed", description)
    except AgentError as e:
        log.warning("could not report the failure to the fabric", extra=fields(reason=e.reason))
        return False
    log.info("reported NotReady/ProvisioningFailed", extra=fields(description=description))
    return True
