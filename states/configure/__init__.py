"""Configure steps: the changes CONFIGURING makes on the VM, one module per step, chosen by config.

Each step has `plan(ctx, facts) -> Change | None` (what it would change and why; None when the VM already
matches) and `apply(ctx, facts) -> Change | None` (make it so; idempotent, so a crash halfway through is
repaired by running it again). A step that cannot do all of its work but leaves the VM usable raises
`RecoverableError`; anything else it raises fails provisioning.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

from statemachine.context import Context
from states.imds import Instance

if TYPE_CHECKING:  # states.media imports lxml; the facts only carry its result
    from states.media import OvfEnv


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the platform told us about this VM."""

    instance: Instance
    media: OvfEnv | None = None  # the provisioning media's ovf-env.xml, where enabled and present


@dataclasses.dataclass(frozen=True)
class Change:
    step: str
    before: str
    after: str
    why: str

    def describe(self) -> str:
        return f"{self.step}: {self.before} → {self.after} ({self.why})"


class ConfigureStep(Protocol):
    def plan(self, ctx: Context, facts: Facts) -> Change | None: ...
    def apply(self, ctx: Context, facts: Facts) -> Change | None: ...


def registry() -> dict[str, ConfigureStep]:
    from states.configure import hostname, ssh_keys, user

    return {"hostname": hostname, "user": user, "ssh_keys": ssh_keys}
