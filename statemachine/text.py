"""Text that fits wherever azprov writes it: the record, a log line, an XML or JSON body, a KVP record;
and the UTC timestamps the record holds and `--status` shows.

Any value that came from outside (IMDS, the provisioning media, a library's error message) may hold what
JSON allows but those places do not: lone surrogates (UTF-8 cannot carry them, so the record could not be
saved), the noncharacters U+FFFE/U+FFFF (XML refuses them, so no report could be built) and the other
noncharacters, and C0 control characters other than tab, newline and carriage return. `clean` replaces each
with U+FFFD, so the text stays visibly damaged where it was damaged, and cuts it to a length.

Cutting keeps both ends, at word boundaries: our own words come first and the root cause last ("… Connection
refused"), so the middle (a library's repr, a URL) is what goes. Pure; no I/O.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

REPLACEMENT = "\ufffd"
MARK = " … "  # where a cut text lost its middle
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(17))
_UNREPRESENTABLE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff{_NONCHARACTERS}]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_WORD_SLACK = 24  # how far a cut may move to reach a space before it cuts a word instead
MAX_INT_BITS = 3322  # about 1000 decimal digits: no value of ours is longer (Python refuses str() past 4300)


def utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_utc(text: str) -> datetime.datetime:
    """The inverse of utc_now(). fromisoformat, not strptime: _strptime drags in calendar and locale."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {text!r}")
    return datetime.datetime.fromisoformat(text[:-1]).replace(tzinfo=datetime.timezone.utc)


def representable(text: str) -> str:
    """`text` with every unrepresentable character replaced by U+FFFD."""
    return _UNREPRESENTABLE.sub(REPLACEMENT, text)


def clean(text: str, limit: int | None = None) -> str:
    """Representable everywhere, and at most `limit` characters (None: any length)."""
    text = representable(text)
    if limit is None or len(text) <= limit:
        return text
    if limit <= len(MARK) + 8:  # too short to keep both ends: the end names the cause
        return text[len(text) - max(limit, 0):]
    room = limit - len(MARK)
    head_room = room // 3
    head = text[:head_room]
    space = head.rfind(" ")
    if space >= head_room - _WORD_SLACK and space > 0:
        head = head[:space]
    tail_room = limit - len(MARK) - len(head)
    tail = text[len(text) - tail_room:]
    space = tail.find(" ")
    if 0 <= space <= _WORD_SLACK and space < len(tail) - 1:
        tail = tail[space + 1:]
    return head.rstrip() + MARK + tail.lstrip()


def clean_json(value: Any, limit: int | None = None) -> Any:
    """A JSON value made storable as UTF-8 JSON: lone surrogates in every string (keys too) replaced,
    non-finite floats and integers beyond MAX_INT_BITS replaced by a string saying so; everything else
    UTF-8 carries is kept as it is. Containers are rebuilt."""
    if isinstance(value, str):
        return _SURROGATES.sub(REPLACEMENT, value if limit is None else clean(value, limit))
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= MAX_INT_BITS else "<integer too large>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_SURROGATES.sub(REPLACEMENT, str(k)): clean_json(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v, limit) for v in value]
    return clean_json(str(value), limit)


def parse_bool(value: object) -> bool | None:
    """The one reading of a true/false setting: a JSON boolean, or "true"/"false" in any case (what IMDS
    and ovf-env.xml send). None for absent or empty; anything else raises ValueError."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("not true or false")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {clean(literal, 40)} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


MAX_JSON_DEPTH = 64  # IMDS documents and our records nest five or six levels deep
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, strings skipped. Checked before decoding, so a
    hostile document is refused without driving the decoder to the recursion limit (where even reporting
    the error can fail)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def decode_json(raw: bytes, encoding: str = "utf-8") -> Any:
    """The one JSON reader for outside documents (IMDS, the record). Every way decoding can fail raises
    ValueError with a short message: bad UTF-8, bad syntax, NaN/Infinity (not JSON), numbers that overflow
    to infinity (1e999), integers past Python's int-string limit, nesting deeper than the stack."""
    import json

    try:
        text = raw.decode(encoding)
        if _nesting(text) > MAX_JSON_DEPTH:
            raise ValueError("document is nested too deeply")
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("document is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        if "integer string conversion" in str(e):  # Python's own words name a setting, not the input
            raise ValueError("integer has more than 4300 digits") from None
        raise ValueError(clean(str(e), 200)) from None
