"""The phases of provisioning, apart from the machine so that reading a record never imports `transitions`
(a provisioned VM's later boots must stay cheap)."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    NETWORK_WAIT = "network_wait"
    GOALSTATE = "goalstate"
    REPORTING = "reporting"
    CONFIGURING = "configuring"
    DONE = "done"
    FAILED = "failed"


TERMINAL = frozenset({Phase.DONE, Phase.FAILED})
ACTIVE = [p for p in Phase if p not in TERMINAL]
