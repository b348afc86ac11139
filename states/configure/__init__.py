"""Configure steps: the changes CONFIGURING makes on the VM, one module per step, chosen by config.

Each step has `plan(ctx, facts) -> Change | None` (what it would change and why; None when the VM already
matches) and `apply(ctx, facts) -> Change | None` (make it so; idempotent, so a crash halfway through is
repaired by running it again). A step that cannot do all of its work but leaves the VM usable raises
`RecoverableError`; anything else it raises fails provisioning.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from statemachine.context import Context

if TYPE_CHECKING:  # annotations only: states.configuring imports this package, states.media imports lxml
    from states.configuring import Instance
    from states.media import OvfEnv


class Facts(NamedTuple):
    """What the platform told us about this VM."""

    instance: Instance
    media: OvfEnv | None = None  # the provisioning media's ovf-env.xml, where enabled and present


class Change(NamedTuple):
    step: str
    before: str
    after: str
    why: str

    def describe(self) -> str:
        return f"{self.step}: {self.before} → {self.after} ({self.why})"


class ConfigureStep(Protocol):
    def plan(self, ctx: Context, facts: Facts) -> Change | None: ...
    def apply(self, ctx: Context, facts: Facts) -> Change | None: ...


STEP_NAMES = ("hostname", "publish", "user", "ssh_keys")


class _Registry(Mapping[str, ConfigureStep]):
    """Step name → module, imported when first looked up: a run configured for `hostname` alone never
    loads `user` and `ssh_keys` (two modules and their imports: a few ms of start-up)."""

    def __getitem__(self, name: str) -> ConfigureStep:
        if name not in STEP_NAMES:
            raise KeyError(name)
        module: ConfigureStep = importlib.import_module(f"states.configure.{name}")
        return module

    def __contains__(self, name: object) -> bool:  # Mapping's own would import the step to find out
        return name in STEP_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(STEP_NAMES)

    def __len__(self) -> int:
        return len(STEP_NAMES)


def registry() -> Mapping[str, ConfigureStep]:
    return _Registry()
