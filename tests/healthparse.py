"""Reading health bodies back: the tests' counterpart of `statemachine.health` (azprov never parses them).

Accepts any of the peers' layouts (WALinuxAgent, cloud-init, azure-init), so a test can compare ours with
theirs field by field. Raises only GoalStateError.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from statemachine.errors import GoalStateError
from statemachine.health import STATES, HealthReport
from states import xmlutil


class ProvisioningHealth(NamedTuple):
    state: str
    substatus: str | None = None
    description: str | None = None


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


def parse_provisioning_health(body: bytes) -> ProvisioningHealth:
    """Read a JSON health body back."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GoalStateError("JSON health report is not valid UTF-8 JSON", error=str(e)[:200]) from e
    if not isinstance(doc, dict) or doc.get("state") not in STATES:
        raise GoalStateError("JSON health report lacks a valid state")
    details = doc.get("details")
    if details is None:
        return ProvisioningHealth(doc["state"])
    if not isinstance(details, dict) or not isinstance(details.get("subStatus"), str) \
            or not isinstance(details.get("description", ""), str):
        raise GoalStateError("JSON health report has malformed details")
    return ProvisioningHealth(doc["state"], details["subStatus"], details.get("description"))
