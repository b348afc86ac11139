"""`azprov status` for people: the `--status --json` document rendered as text, one `label: value` line
each, then the history and the configure steps; `--long` adds the time per state and every error with
each of its details on its own line. Pure: the document is all it reads, and a record's values are never
trusted to be strings.
"""

from __future__ import annotations

import json
from typing import Any

from statemachine.errors import ConfigError


def headline(data: dict[str, Any]) -> str:
    state = _s(data.get("state"))
    if data.get("running"):
        return f"{state} (running, pid {data.get('pid')})"
    if data.get("interrupted") and state != "disabled":
        return f"{state} (interrupted)"
    return state


def _line(label: str, value: Any) -> str:
    return f"{label + ':':<18}{value if value not in (None, '') else '-'}"


def render_document(data: dict[str, Any], long: bool = False) -> str:
    lines = [_line("state", headline(data)), _line("detail", data.get("detail"))]
    if data.get("disabled_reason") and data.get("state") != "disabled":
        lines.append(_line("disabled", data["disabled_reason"]))
    if data.get("config_error"):
        lines.append(_line("config error", str(ConfigError.from_dict(data["config_error"]))))
    if data.get("state") in ("not_started", "disabled", "unknown") and data.get("vm_id") is None:
        if data.get("state") == "unknown" and data.get("last_error"):
            lines.append(_line("last error", _reason(data["last_error"])))
        return "\n".join(lines)
    source = {"smbios": "SMBIOS product_uuid", "imds": "IMDS compute.vmId (no SMBIOS on this machine)"}
    vm_id, vm_source = data.get("vm_id"), data.get("vm_id_source")
    vm = _s(vm_id) + (f" (from {source.get(_s(vm_source), _s(vm_source))})" if vm_source else "") if vm_id else None
    lines += [
        _line("vm id", vm),
        _line("incarnation", data.get("incarnation")),
        _line("container id", data.get("container_id")),
        _line("instance id", data.get("instance_id")),
        _line("ready reported", data.get("reported_ready_at")),
        _line("failure reported", data.get("failure_reported_at")),
        _line("boot attempts", data.get("boot_attempts")),
        "history:",
    ]
    for entry in data.get("history") or []:
        lines.append(f"  {_s(entry.get('at', '?')):<26}{_s(entry.get('state', '?')):<14}"
                     f"{_took(entry.get('duration_s')):>10}  ({_s(entry.get('event', ''))})")
    steps = data.get("steps") or {}
    if steps:
        lines.append("configure steps:")
        # In the order they ran (the record's JSON keeps keys sorted).
        for name, step in sorted(steps.items(), key=lambda item: str(item[1].get("at", ""))):
            error = step.get("error")
            detail = step.get("result") or (error.get("reason", "") if isinstance(error, dict) else "")
            lines.append(f"  {name:<12}{_s(step.get('status', '?')):<20}{_s(step.get('at', '')):<26}"
                         f"{_took(step.get('duration_s')):>10}  {_s(detail)}")
    for err in data.get("recoverable_errors") or []:
        lines.append(_line("recoverable error", f"{_s(err.get('step', '?'))}: {_reason(err)}"))
    last_error = data.get("last_error")
    if long:  # the error in full comes below, each detail on its own line
        return "\n".join(lines + _long(data))
    lines.append(_line("last error", _reason(last_error) if isinstance(last_error, dict) else None))
    return "\n".join(lines)


def _long(data: dict[str, Any]) -> list[str]:
    """`--long`: time spent in each state, and every error with each of its details on its own line."""
    lines = ["time per state:"]
    totals: dict[str, float] = {}
    for entry in data.get("history") or []:
        took = entry.get("duration_s")
        if isinstance(took, (int, float)) and not isinstance(took, bool):
            state = _s(entry.get("state", "?"))
            totals[state] = totals.get(state, 0.0) + took
    for state, took in totals.items():
        lines.append(f"  {state:<14}{took:>10.3f}s")
    lines.append(f"  {'total':<14}{sum(totals.values()):>10.3f}s")
    lines.append(_line("record created", data.get("created_at")))
    lines.append(_line("record updated", data.get("updated_at")))
    for label, err in [("config error", data.get("config_error")),
                       *(("recoverable error", e) for e in data.get("recoverable_errors") or [])]:
        if isinstance(err, dict):
            lines += _error_lines(label, err)
    last_error = data.get("last_error")
    lines += _error_lines("last error", last_error) if isinstance(last_error, dict) else [_line("last error", None)]
    return lines


def _error_lines(label: str, err: dict[str, Any]) -> list[str]:
    lines = [f"{label}:", f"  reason: {_s(err.get('reason', '?'))}"]
    for key in ("step", "state", "at"):
        if err.get(key) is not None:
            lines.append(f"  {key}: {_s(err[key])}")
    data = err.get("data")
    if isinstance(data, dict):
        lines += [f"  {key}: {_s(value)}" for key, value in sorted(data.items())]
    return lines


def _took(value: Any) -> str:
    return f"{value:.3f}s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "…"


def _s(value: Any) -> str:
    """Text for a value read from the record: never trust it to be a string (format specs would raise)."""
    return value if isinstance(value, str) else json.dumps(value)


def _reason(err: dict[str, Any]) -> str:
    data = err.get("data")
    details = ", ".join(f"{k}={_s(v)}" for k, v in sorted(data.items())) if isinstance(data, dict) else ""
    where = f" [in {_s(err['state'])} at {_s(err.get('at', '?'))}]" if err.get("state") else ""
    return _s(err.get("reason", "?")) + (f" ({details})" if details else "") + where
