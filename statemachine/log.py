"""Logging to stdout, one line per event, journald-friendly.

Under systemd (`$JOURNAL_STREAM` set) every line carries an sd-daemon `<N>` priority prefix so journald
keeps the level; a person running `azprov` by hand sees plain text. Messages are constant phrases; the
variable parts go in `extra={"fields": {...}}` and are printed as `key='value'` pairs. Nothing secret
(passwords, customData) is ever passed in.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JournalFormatter(logging.Formatter):
    def __init__(self, prefix: bool) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        kv = "".join(f" {k}={v!r}" for k, v in sorted(fields.items()))
        line = f"{record.name}: {record.getMessage()}{kv}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if not self.prefix:
            return line
        priority = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{part}" for part in line.splitlines())


def setup(level: str = "info") -> None:
    """Configure the root `azprov` logger once, from config, overridable by SYSTEMD_LOG_LEVEL."""
    override = os.environ.get("SYSTEMD_LOG_LEVEL", "").lower()
    chosen = LEVELS.get(override, LEVELS.get(level, logging.INFO))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JournalFormatter(prefix=bool(os.environ.get("JOURNAL_STREAM"))))
    for name in ("azprov", "statemachine", "states"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(chosen)
        logger.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """`log.info("msg", extra=fields(a=1))` reads better than the nested dict."""
    return {"fields": values}
