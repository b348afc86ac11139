"""CONFIGURING: read the instance metadata and run the configured steps, one per runner turn.

Each turn runs the next step not yet finished and returns its status as progress (no event), so the
runner persists it before the next step starts: a crash after "user" resumes at "ssh_keys". When every
step is finished the phase ends with `configured`. The IMDS document is fetched once per run and kept
in memory only (it can carry secrets such as customData; the record never holds it).
"""

from __future__ import annotations

import logging
from typing import Any

from statemachine.context import Context, Outcome
from statemachine.errors import RecoverableError
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.timeutil import utc_now
from states.configure import Facts, registry
from states.imds import parse_instance

log = logging.getLogger(__name__)

FINISHED = ("done", "unchanged", "recoverable_error")


def facts(ctx: Context) -> Facts:
    cached = getattr(ctx, "_facts", None)
    if isinstance(cached, Facts):
        return cached
    result = Facts(instance=parse_instance(ctx.metadata().get_instance()))
    ctx._facts = result  # type: ignore[attr-defined]
    return result


def identity_updates(record: Record, found: Facts) -> dict[str, Any]:
    """Without SMBIOS the VM id comes from IMDS once the network is up (the runner logs the fallback)."""
    if record.vm_id is None and found.instance.vm_id:
        return {"vm_id": found.instance.vm_id.lower(), "vm_id_source": "imds"}
    return {}


def step(ctx: Context, record: Record) -> Outcome:
    found = facts(ctx)
    updates = identity_updates(record, found)
    steps = registry()
    for name in ctx.config.configure.steps:
        if record.steps.get(name, {}).get("status") in FINISHED:
            continue
        started = ctx.clock()
        entry: dict[str, Any] = {"at": utc_now()}
        try:
            change = steps[name].apply(ctx, found)
        except RecoverableError as e:
            log.warning("configure step could not finish", extra=fields(step=name, reason=str(e)))
            entry.update(status="recoverable_error", error=e.as_dict())
            updates["recoverable_errors"] = (*record.recoverable_errors, {"step": name, **e.as_dict()})
        else:
            entry.update(status="done" if change else "unchanged",
                         result=change.describe() if change else "already as required")
        entry["duration_s"] = round(ctx.clock() - started, 3)
        updates["steps"] = {**record.steps, name: entry}
        return Outcome(None, updates)
    return Outcome("configured", updates)
