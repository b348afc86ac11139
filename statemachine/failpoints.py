"""Named crash points for the reliability tests, inert unless armed by the environment.

`AZPROV_FAILPOINT=name:action[,name:action...]` arms them; action is `kill` (SIGKILL to ourselves, like a
power cut), `exit` (`os._exit(137)`, no cleanup, no flush) or `raise` (an exception the runner does not
expect). Production never sets the variable, and the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal


def _parse(spec: str) -> dict[str, str]:
    armed: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition(":")
        armed[name] = action or "kill"
    return armed


_ARMED = _parse(os.environ.get("AZPROV_FAILPOINT", ""))


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `raise`: stands for a bug we did not foresee."""


def failpoint(name: str) -> None:
    action = _ARMED.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(137)
    raise FailpointError(f"failpoint {name} fired")
