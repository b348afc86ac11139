"""The JSON health protocol: the body of `POST /provisioning/health` (azure-init `libazureinit/src/health.rs`).

`fabric.health_protocol = "provisioning"` sends this instead of the goal-state-bound health XML:
`{"state":"Ready"}` or `{"details":{"description":…,"subStatus":"ProvisioningFailed"},"state":"NotReady"}`,
with the header `x-ms-guest-agent-name` (set by `fabric.WireServer.post_provisioning_health`). Keys are
sorted and the separators compact, byte for byte what azure-init sends (serde_json without
preserve_order). Pure: bytes out, bytes in; `parse_provisioning_health` exists for tests and the fake fabric.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from statemachine.errors import AgentError, GoalStateError

STATES = ("Ready", "NotReady")


class ProvisioningHealth(NamedTuple):
    state: str
    substatus: str | None = None
    description: str | None = None


def render_provisioning_health(state: str, substatus: str | None = None, description: str | None = None) -> bytes:
    """The JSON body. A Ready report carries no details, as azure-init's does not."""
    if state not in STATES:
        raise AgentError("health state is not Ready or NotReady", state=state)
    doc: dict[str, Any] = {"state": state}
    if substatus is not None:
        doc["details"] = {"subStatus": substatus, "description": description or ""}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_provisioning_health(body: bytes) -> ProvisioningHealth:
    """Read a JSON health body back. Raises only GoalStateError."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
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
