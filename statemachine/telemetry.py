"""What azprov tells the Hyper-V host through KVP: an event per state entered and left, and the report.

The texts (keys, values, the report line) are `statemachine.health`'s; the pool format is `statemachine.kvp`'s.
`<run>` in an event key is random per process and `<seq>` counts the run's events, so keys never collide
within a boot (the host sees the pool as a dictionary) and sort in the order they were written. A disabled
or absent pool makes every call a no-op.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from statemachine.health import REPORT_KEY, event_key, event_value, report_fields
from statemachine.kvp import KvpPool
from statemachine.log import fields
from statemachine.text import utc_now

log = logging.getLogger(__name__)


class Telemetry:
    """The runner's and the reporting step's one handle on KVP."""

    def __init__(self, pool: KvpPool | None, run_id: str | None = None,
                 clock: Callable[[], str] = utc_now) -> None:
        self.pool = pool
        self.run_id = run_id or os.urandom(4).hex()
        self.clock = clock
        self.vm_id: str | None = None
        self.seq = 0
        self._reported: set[str] = set()

    def _event(self, kind: str, name: str, result: str, duration_s: float | None, msg: str) -> None:
        if self.pool is None:
            return
        self.seq += 1
        key = event_key(self.vm_id, kind, name, self.run_id, self.seq)
        self.pool.write([(key, event_value(name, kind, result, duration_s, msg, self.clock()))])

    def entered(self, state: str, msg: str = "") -> None:
        self._event("enter", state, "-", None, msg)

    def left(self, state: str, result: str, duration_s: float, msg: str = "") -> None:
        self._event("leave", state, result, duration_s, msg)

    def report(self, text: str) -> bool:
        """Write PROVISIONING_REPORT, once per result per run (the failure path retries its POST; the
        record need not repeat). True when it is in the pool."""
        result = report_fields(text).get("result", "")
        if self.pool is None or result in self._reported:
            return False
        if self.pool.write([(REPORT_KEY, text)]):
            self._reported.add(result)
            log.debug("provisioning report written to KVP", extra=fields(result=result))
            return True
        return False
