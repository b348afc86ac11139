"""`azprov --dry-run`: what a run would do here, without doing any of it.

It waits for the WireServer, fetches the goal state and the IMDS document (and reads the provisioning
media when enabled) with the same retry policy and budgets as a run, then asks every configured step for
its `plan()`. It posts no health report, writes no record, saves no CustomData and changes nothing on the
VM. `render()` gives one line per step: "hostname: unprovisioned → web-01 (IMDS osProfile.computerName)".
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from statemachine.context import Context
from statemachine.errors import AgentError, RecoverableError
from statemachine.machine import PHASES, Phase
from statemachine.persistence import Record
from statemachine.runner import within_budget
from states import configuring, goalstate, network_wait
from states.configure import registry

T = TypeVar("T")


def _in_phase(ctx: Context, phase: Phase, call: Callable[[], T]) -> T:
    """`call` with the retries, policy and budget a run gives `phase`."""
    spec = PHASES[phase]
    budget = float(getattr(ctx.config.fabric, spec.budget_key))
    return within_budget(ctx, ctx.clock() + budget, spec.policy, call)


def plan(ctx: Context) -> dict[str, Any]:
    """The plan as a JSON-able dict. Raises AgentError when the fabric cannot be read."""
    # attempts=1: no run counts the probes here, so the step's "waiting" line would repeat on every one.
    _in_phase(ctx, Phase.NETWORK_WAIT, lambda: network_wait.step(ctx, Record(attempts=1)))
    gs = _in_phase(ctx, Phase.GOALSTATE, lambda: goalstate.fetch(ctx))
    found = _in_phase(ctx, Phase.CONFIGURING, lambda: configuring.facts(ctx))
    problem = ctx.run.media_problem
    steps: list[dict[str, Any]] = []
    for name in ctx.config.configure.steps:
        try:
            change = registry()[name].plan(ctx, found)
        except AgentError as e:
            steps.append({"step": name, "action": "error", "recoverable": isinstance(e, RecoverableError),
                          **e.as_dict()})
            continue
        if change is None:
            steps.append({"step": name, "action": "none"})
        else:
            steps.append({"step": name, "action": "change", "before": change.before, "after": change.after,
                          "why": change.why})
    env = found.media
    return {
        "dry_run": True,
        "incarnation": gs.incarnation,
        "vm_id": found.instance.vm_id,
        "media": None if not ctx.config.media.enabled else
        {"found": env is not None, "error": problem.as_dict() if problem else None},
        "custom_data": None if env is None or env.custom_data is None else
        {"path": str(ctx.config.state_dir / configuring.CUSTOM_DATA), "size": len(env.custom_data)},
        "steps": steps,
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"dry run: nothing changed, nothing posted (goal state incarnation {result['incarnation']})"]
    for s in result["steps"]:
        if s["action"] == "change":
            lines.append(f"{s['step']}: {s['before']} → {s['after']} ({s['why']})")
        elif s["action"] == "none":
            lines.append(f"{s['step']}: nothing to do")
        else:
            data = ", ".join(f"{k}={v}" for k, v in sorted((s.get("data") or {}).items()))
            kind = "recoverable error" if s["recoverable"] else "error"
            lines.append(f"{s['step']}: {kind}: {s['reason']}" + (f" ({data})" if data else ""))
    media = result.get("media")
    if media is not None:
        state = "read" if media["found"] else "none found"
        if media["error"]:
            state = f"unusable: {media['error']['reason']}"
        lines.append(f"media: {state}")
    if result.get("custom_data"):
        cd = result["custom_data"]
        lines.append(f"custom_data: would save {cd['size']} bytes to {cd['path']} (mode 0600)")
    return "\n".join(lines)
