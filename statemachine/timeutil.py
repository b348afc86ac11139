"""UTC timestamps as stored in the record and shown by `--status`."""

from __future__ import annotations

import datetime


def utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_utc(text: str) -> datetime.datetime:
    """The inverse of utc_now(). fromisoformat, not strptime: _strptime drags in calendar and locale."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {text!r}")
    return datetime.datetime.fromisoformat(text[:-1]).replace(tzinfo=datetime.timezone.utc)
