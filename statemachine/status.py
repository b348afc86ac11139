"""`azprov --status`: read the record (never the lock), render it for people or machines, pick the exit code.

Exit codes follow `cloud-init status`: 0 no error (done, running or not started), 1 failed, 2 done with
recoverable errors. The record is replaced atomically by the run, so reading it mid-run is safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from statemachine.persistence import Record, load, to_json
from statemachine.phase import Phase

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RECOVERABLE = 2


def exit_code(record: Record | None) -> int:
    if record is None:
        return EXIT_OK
    if record.state is Phase.FAILED:
        return EXIT_FAILED
    if record.state is Phase.DONE and record.recoverable_errors:
        return EXIT_RECOVERABLE
    return EXIT_OK


def _running(state_dir: Path) -> bool:
    """Best effort, without touching the lock: is the pid the last run wrote into it still alive?"""
    try:
        pid = int((state_dir / "lock").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"azprov" in cmdline or b"statemachine" in cmdline


def as_json(record: Record | None, state_dir: Path) -> dict[str, Any]:
    if record is None:
        return {"state": "not_started", "vm_id": None, "incarnation": None, "reported_ready_at": None,
                "history": [], "last_error": None, "running": _running(state_dir), "steps": {},
                "recoverable_errors": []}
    data = to_json(record)
    data["running"] = record.state not in (Phase.DONE, Phase.FAILED) and _running(state_dir)
    return data


def _line(label: str, value: Any) -> str:
    return f"{label + ':':<18}{value if value not in (None, '') else '-'}"


def render(record: Record | None, state_dir: Path) -> str:
    data = as_json(record, state_dir)
    lines = [_line("state", data["state"] + (" (running)" if data["running"] else ""))]
    if record is None:
        lines.append(f"no record in {state_dir}: azprov has not run on this VM yet")
        return "\n".join(lines)
    source = {"smbios": "SMBIOS product_uuid", "imds": "IMDS compute.vmId (no SMBIOS on this machine)"}
    vm = record.vm_id + (f" (from {source.get(record.vm_id_source or '', record.vm_id_source)})"
                         if record.vm_id_source else "") if record.vm_id else None
    lines += [
        _line("vm id", vm),
        _line("incarnation", record.incarnation),
        _line("container id", record.container_id),
        _line("instance id", record.instance_id),
        _line("ready reported", record.reported_ready_at),
        _line("failure reported", record.failure_reported_at),
        _line("boot attempts", record.boot_attempts),
        "history:",
    ]
    for entry in record.history:
        took = f"{entry['duration_s']:.3f}s" if isinstance(entry.get("duration_s"), (int, float)) else "…"
        lines.append(f"  {_s(entry.get('at', '?')):<26}{_s(entry.get('state', '?')):<14}{took:>10}  "
                     f"({_s(entry.get('event', ''))})")
    if record.steps:
        lines.append("configure steps:")
        # In the order they ran (the record's JSON keeps keys sorted).
        for name, step in sorted(record.steps.items(), key=lambda item: str(item[1].get("at", ""))):
            error = step.get("error")
            detail = step.get("result") or (error.get("reason", "") if isinstance(error, dict) else "")
            took = f"{step['duration_s']:.3f}s" if isinstance(step.get("duration_s"), (int, float)) else "…"
            lines.append(f"  {name:<12}{_s(step.get('status', '?')):<20}{_s(step.get('at', '')):<26}{took:>10}  "
                         f"{_s(detail)}")
    for err in record.recoverable_errors:
        lines.append(_line("recoverable error", f"{err.get('step', '?')}: {_reason(err)}"))
    lines.append(_line("last error", _reason(record.last_error) if record.last_error else None))
    return "\n".join(lines)


def _s(value: Any) -> str:
    """Text for a value read from the record: never trust it to be a string (format specs would raise)."""
    return value if isinstance(value, str) else json.dumps(value)


def _reason(err: dict[str, Any]) -> str:
    data = err.get("data")
    details = ", ".join(f"{k}={v}" for k, v in sorted(data.items())) if isinstance(data, dict) else ""
    where = f" [in {_s(err['state'])} at {_s(err.get('at', '?'))}]" if err.get("state") else ""
    return _s(err.get("reason", "?")) + (f" ({details})" if details else "") + where


def show(state_file: Path, as_json_output: bool) -> tuple[str, int]:
    record = load(state_file)
    if as_json_output:
        return json.dumps(as_json(record, state_file.parent), sort_keys=True, indent=2), exit_code(record)
    return render(record, state_file.parent), exit_code(record)


def is_settled(state_file: Path) -> bool:
    """For `--status --wait`: a terminal record exists (a run that never started keeps us waiting)."""
    try:
        record = load(state_file)
    except Exception:
        return False
    return record is not None and record.state in (Phase.DONE, Phase.FAILED) and not _running(state_file.parent)


def kvp_json(pool: Path) -> dict[str, Any]:
    """The pool decoded (split values rejoined), or why it could not be read."""
    from statemachine import kvp

    try:
        records = kvp.decode_pool(pool.read_bytes())
    except OSError as e:
        return {"path": str(pool), "error": e.strerror or str(e)}
    return {"path": str(pool), "records": [r._asdict() for r in records]}


def with_kvp(text: str, pool: Path, as_json_output: bool) -> str:
    """`--status --kvp`: the record's view followed by the Hyper-V KVP pool, decoded."""
    from statemachine import kvp

    if not as_json_output:
        return text + "\nkvp pool:\n" + kvp.format_pool(pool)
    data = json.loads(text)
    data["kvp"] = kvp_json(pool)
    return json.dumps(data, sort_keys=True, indent=2)
