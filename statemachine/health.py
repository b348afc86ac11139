"""Every report body azprov sends: the health XML, the JSON health body, the report line, and its KVP copy.

Pure functions only (no clock, no I/O); `fabric` sends what they build. Every text goes through
`text.clean` first, so a body can always be built whatever IMDS or the media held.

The report line says how provisioning ended and why. The same words go to the KVP record
`PROVISIONING_REPORT`, the `<Description>` of a NotReady/ProvisioningFailed health report (or the
`description` of the JSON one) and the log. Layout (cloud-init's `cloudinit/sources/azure/errors.py` order,
which azure-init follows too):

    result=error|reason=<reason>|agent=azprov/<ver>|<supporting data k=v ...>|vm_id=<id>|timestamp=<utc>
    |documentation_url=https://aka.ms/linuxprovisioningerror

and on success just `result=success|agent=…|vm_id=…|timestamp=…`. Inside a value, `%`, `|`, `=` and control
characters (U+0000–U+001F, U+007F) are written as `%XX` (upper-case hex of the code point), so splitting on
`|` and then on the first `=` is always safe; keys are restricted to `[A-Za-z0-9_.-]`. `decode_fields`
reverses `encode_fields` exactly for representable text.

The XML body (`render_health`) is what WALinuxAgent and cloud-init post to `/machine?comp=health`; the JSON
body (`render_provisioning_health`) is azure-init's `POST /provisioning/health`: keys sorted, separators
compact, byte for byte what serde_json sends. KVP event records carry one line per state entered and left:

    key   azprov|<vm_id>|<enter|leave>|<state>|<run>.<seq>
    value name=<state>|event=<enter|leave>|result=<success|error|retry|->|duration_s=<s>|msg=<text>|timestamp=<utc>
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from statemachine import AGENT_NAME, __version__
from statemachine.errors import AgentError
from statemachine.text import clean

MAX_DESCRIPTION = 512  # characters; cloud-init cuts the health Description to this
DOCUMENTATION_URL = "https://aka.ms/linuxprovisioningerror"
ELLIPSIS = "..."
STATES = ("Ready", "NotReady")
XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
JSON_HEADERS = {"Content-Type": "application/json", "x-ms-guest-agent-name": AGENT_NAME}
REPORT_KEY = "PROVISIONING_REPORT"  # the KVP key of the report line
EVENT_PREFIX = "azprov"

_KEY_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_ESCAPE = re.compile(r"[%|=\x00-\x1f\x7f]")
_UNESCAPE = re.compile(r"%([0-9A-F]{2})")
_NAME_BAD = re.compile(r"[^a-z0-9_.-]")


# ---- the report line ---------------------------------------------------------------------------------------

def escape_value(value: str) -> str:
    return clean(_ESCAPE.sub(lambda m: f"%{ord(m.group()):02X}", value))


def unescape_value(text: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def clean_key(key: str) -> str:
    return _KEY_BAD.sub("_", key) or "_"


def encode_fields(items: Iterable[tuple[str, object]]) -> str:
    """`k=v|k=v…` with values escaped. None becomes the empty string."""
    return "|".join(f"{clean_key(k)}={escape_value('' if v is None else str(v))}" for k, v in items)


def decode_fields(text: str) -> list[tuple[str, str]]:
    """Inverse of `encode_fields` (order and duplicates kept). A part without `=` gets an empty key."""
    if not text:
        return []
    out = []
    for part in text.split("|"):
        key, sep, value = part.partition("=")
        out.append((key, unescape_value(value)) if sep else ("", unescape_value(key)))
    return out


def report_fields(text: str) -> dict[str, str]:
    """A report line as a dict (last one wins for a repeated key)."""
    return dict(decode_fields(text))


def _fit(key: str, value: str, room: int) -> tuple[str | None, bool]:
    """`key=<escaped value>` within `room` characters, and whether it was cut ('...' marks the cut).
    Never cuts an escape apart. None when not even `key=...` fits."""
    whole = f"{key}={escape_value(value)}"
    if len(whole) <= room:
        return whole, False
    head = f"{key}="
    if room < len(head) + len(ELLIPSIS):
        return None, True
    out = head
    for ch in value:  # escaping is per character, so grow character by character
        piece = escape_value(ch)
        if len(out) + len(piece) + len(ELLIPSIS) > room:
            break
        out += piece
    return out + ELLIPSIS, True


def encode_report(result: str, vm_id: str | None, timestamp: str, reason: str | None = None,
                  data: Mapping[str, Any] | None = None, agent: str = f"{AGENT_NAME}/{__version__}",
                  limit: int = MAX_DESCRIPTION) -> str:
    """The report line, at most `limit` characters.

    result, agent, vm_id, timestamp and documentation_url are never shortened (they identify the VM and
    the run); when the line is too long the supporting data is cut from the end, then the reason.
    """
    error = result != "success"
    head = [("result", result)]
    tail = [("vm_id", vm_id or "unknown"), ("timestamp", timestamp)]
    if error:
        tail.append(("documentation_url", DOCUMENTATION_URL))
    fixed = encode_fields(head) + "|" + encode_fields([("agent", agent), *tail])
    middle: list[tuple[str, object]] = []
    if error:
        middle = [("reason", reason or "unknown error"),
                  *((clean_key(k), v) for k, v in (data or {}).items())]
    room = limit - len(fixed)
    parts: list[str] = []
    for key, value in middle:
        piece, cut = _fit(key, "" if value is None else str(value), room - 1)  # 1 for the '|'
        if piece is None:
            break
        parts.append(piece)
        room -= len(piece) + 1
        if cut:
            break  # the rest would not fit either, and a gap would mislead
    # reason sits before agent, the supporting data after it (cloud-init's order)
    return "|".join([encode_fields(head), *parts[:1], f"agent={escape_value(agent)}", *parts[1:],
                     encode_fields(tail)])


def failure_report(reason: str, data: Mapping[str, Any], vm_id: str | None, timestamp: str,
                   limit: int = MAX_DESCRIPTION) -> str:
    return encode_report("error", vm_id, timestamp, reason=reason, data=data, limit=limit)


def success_report(vm_id: str | None, timestamp: str) -> str:
    return encode_report("success", vm_id, timestamp)


def failure_description(error: AgentError, vm_id: str | None, timestamp: str) -> str:
    """The ProvisioningFailed description: the report line of `error`, as the KVP copy has it."""
    return failure_report(error.reason, error.supporting_data, vm_id, timestamp)


# ---- the health bodies -------------------------------------------------------------------------------------

class HealthReport(NamedTuple):
    incarnation: str
    container_id: str
    instance_id: str
    state: str  # "Ready" or "NotReady"
    substatus: str | None = None
    description: str | None = None


def _check_state(state: str) -> None:
    if state not in STATES:
        raise AgentError("health state is not Ready or NotReady", state=clean(state, 40))


def render_health(report: HealthReport) -> bytes:
    """The WireServer's health document. XML-escaping is lxml's job, never a template's."""
    from lxml import etree  # not on the import path of a run that never reports

    _check_state(report.state)
    health = etree.Element("Health")
    etree.SubElement(health, "GoalStateIncarnation").text = clean(report.incarnation)
    container = etree.SubElement(health, "Container")
    etree.SubElement(container, "ContainerId").text = clean(report.container_id)
    role = etree.SubElement(etree.SubElement(container, "RoleInstanceList"), "Role")
    etree.SubElement(role, "InstanceId").text = clean(report.instance_id)
    role_health = etree.SubElement(role, "Health")
    etree.SubElement(role_health, "State").text = report.state
    if report.substatus is not None:
        details = etree.SubElement(role_health, "Details")
        etree.SubElement(details, "SubStatus").text = clean(report.substatus)
        etree.SubElement(details, "Description").text = clean(report.description or "")
    return bytes(etree.tostring(health, xml_declaration=True, encoding="utf-8"))


def render_provisioning_health(state: str, substatus: str | None = None, description: str | None = None) -> bytes:
    """The JSON body. A Ready report carries no details, as azure-init's does not."""
    _check_state(state)
    doc: dict[str, Any] = {"state": state}
    if substatus is not None:
        doc["details"] = {"subStatus": clean(substatus), "description": clean(description or "")}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---- the KVP copy ------------------------------------------------------------------------------------------

def event_key(vm_id: str | None, kind: str, name: str, run_id: str, seq: int) -> str:
    safe = _NAME_BAD.sub("_", name.lower())[:64] or "_"
    vm = _NAME_BAD.sub("_", (vm_id or "unknown").lower())[:64]
    return f"{EVENT_PREFIX}|{vm}|{kind}|{safe}|{run_id}.{seq:03d}"


def event_value(name: str, kind: str, result: str, duration_s: float | None, msg: str, timestamp: str) -> str:
    duration = "" if duration_s is None else f"{duration_s:.3f}"
    return encode_fields([("name", name), ("event", kind), ("result", result), ("duration_s", duration),
                          ("msg", msg.replace("\x00", "")), ("timestamp", timestamp)])
