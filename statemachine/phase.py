"""The phases of provisioning: the names a record holds, apart from the lifecycle table (`machine`) so that
reading a record needs nothing else."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    NETWORK_WAIT = "network_wait"
    GOALSTATE = "goalstate"
    REPORTING = "reporting"
    CONFIGURING = "configuring"
    DONE = "done"
    FAILED = "failed"


# The phases a run ends in. DONE never changes again; FAILED does while boot attempts are left
# (`machine.is_terminal`).
TERMINAL = frozenset({Phase.DONE, Phase.FAILED})
ACTIVE = [p for p in Phase if p not in TERMINAL]
