"""Named crash points for the reliability tests, inert unless armed by the environment.

`AZPROV_FAILPOINT=name:action[@N][,name:action[@N]...]` arms them; action is `kill` (SIGKILL to ourselves,
like a power cut), `exit` (`os._exit(137)`, no cleanup, no flush) or `raise` (an exception the runner does
not expect). `@N` fires on the N-th time the point is reached (default: the first), so a test can crash the
fourth save of the record rather than the first. Production never sets the variable, and an unarmed check
is one dict lookup. The names are listed in README.md ("Failpoints"); `POINTS` keeps the fixed ones.
"""

from __future__ import annotations

import os
import signal

PHASE_POINTS = ("before_work", "after_work")  # `<phase>.before_work` etc., for every active phase
POINTS = (
    "persist.before_write",  # the record is serialised, no file touched yet
    "persist.before_rename",  # the temp file is written and fsynced, the rename has not happened
    "persist.after_rename",  # the new record is in place, the directory not yet fsynced
    "reporting.after_post",  # the WireServer answered 200 to Ready; the record does not know yet
    "fail.before_report",  # FAILED is saved; the ProvisioningFailed report is not posted yet
    "fail.after_report",  # the WireServer took the ProvisioningFailed report; failure_reported_at not saved
)


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `raise`: stands for a bug we did not foresee."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    armed: dict[str, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        action, _, nth = rest.partition("@")
        try:
            count = int(nth) if nth else 1
        except ValueError:
            count = 1
        armed[name] = (action or "kill", max(count, 1))
    return armed


_ARMED = _parse(os.environ.get("AZPROV_FAILPOINT", ""))
_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    armed = _ARMED.get(name)
    if armed is None:
        return
    action, nth = armed
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(137)
    raise FailpointError(f"failpoint {name} fired")
