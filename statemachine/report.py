"""The provisioning report: one pipe-delimited line that says how provisioning ended and why.

The same string goes to three places, so an operator reads the same words wherever they look: the KVP
record `PROVISIONING_REPORT`, the `<Description>` of a NotReady/ProvisioningFailed health report (or the
`description` of the JSON one), and the log. Layout (cloud-init's `cloudinit/sources/azure/errors.py`
order, which azure-init follows too):

    result=error|reason=<reason>|agent=azprov/<ver>|<supporting data k=v ...>|vm_id=<id>|timestamp=<utc>
    |documentation_url=https://aka.ms/linuxprovisioningerror

and on success just `result=success|agent=…|vm_id=…|timestamp=…`.

Escaping: inside a value, `%`, `|`, `=` and control characters (U+0000–U+001F, U+007F) are written as `%XX`
(upper-case hex of the code point), so splitting on `|` and then on the first `=` is always safe, even for a
naive reader; a lone surrogate, which UTF-8 cannot carry, becomes `?`. Keys are restricted to
`[A-Za-z0-9_.-]`; anything else becomes `_`. `decode_fields` reverses `encode_fields` exactly (for text
without lone surrogates). Pure functions only: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from statemachine import AGENT_NAME, __version__

MAX_DESCRIPTION = 512  # characters; cloud-init cuts the health Description to this
DOCUMENTATION_URL = "https://aka.ms/linuxprovisioningerror"
ELLIPSIS = "..."

_KEY_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_ESCAPE = re.compile(r"[%|=\x00-\x1f\x7f]")
_UNESCAPE = re.compile(r"%([0-9A-F]{2})")


def escape_value(value: str) -> str:
    # Lone surrogates (undecodable file names, say) cannot travel as UTF-8: they become "?".
    value = value.encode("utf-8", "replace").decode("utf-8")
    return _ESCAPE.sub(lambda m: f"%{ord(m.group()):02X}", value)


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


def report_fields(text: str) -> dict[str, str]:
    """Parse a report line back into a dict (last one wins for a repeated key). For tests and `azprov kvp`."""
    return dict(decode_fields(text))


def failure_report(reason: str, data: Mapping[str, Any], vm_id: str | None, timestamp: str,
                   limit: int = MAX_DESCRIPTION) -> str:
    return encode_report("error", vm_id, timestamp, reason=reason, data=data, limit=limit)


def success_report(vm_id: str | None, timestamp: str) -> str:
    return encode_report("success", vm_id, timestamp)
