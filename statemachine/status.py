"""`azprov --status` / `azprov status`: read the record (never take the lock), build the document that
`--status --json` prints (`status_text` renders it for people), pick the exit code.

Conventions follow `cloud-init status`: 0 no error (done, running, not started, disabled), 1 failed,
2 done with recoverable errors; `--wait` returns once provisioning has ended. Beyond cloud-init:
3 interrupted (a run stopped mid-phase and none holds the lock: the next run resumes it), 77 the record
cannot be read for lack of permission, 124 `--wait --timeout` expired. The record is replaced atomically
by the run, so reading it mid-run is safe. Whether a run is going comes from the kernel's lock table, not
from the pid the last run wrote, which outlives that run.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from statemachine.errors import ConfigError, StateFileError
from statemachine.lock import lock_holder
from statemachine.machine import TERMINAL, Phase
from statemachine.persistence import SCHEMA, Record, check_state_dir, load, to_json
from statemachine.resume import CMDLINE, boot_time, disabled_reason
from statemachine.status_text import headline, render_document
from statemachine.text import parse_utc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RECOVERABLE = 2
EXIT_INTERRUPTED = 3
EXIT_NOPERM = 77  # EX_NOPERM
EXIT_TIMEOUT = 124  # as timeout(1)

# Every `state` the output can carry. "unknown": a record exists but cannot be read or trusted (last_error
# says why); it is neither "failed" (no provisioning outcome is known, and the next run starts fresh) nor
# "not_started" (something did run).
STATES = ("not_started", "disabled", *(p.value for p in Phase), "unknown")

# The JSON keys: every key of a record (so a key the record gains is shown without touching this file),
# then the ones status adds. Every key is always present, null where unknown; keys are only ever added.
RECORD_KEYS = tuple(to_json(Record()))
STATUS_KEYS = ("running", "pid", "interrupted", "disabled_reason", "config_error", "detail")
KEYS = RECORD_KEYS + STATUS_KEYS


def exit_code(record: Record | None) -> int:
    """The exit code a record alone implies (no lock or opt-out view)."""
    if record is None:
        return EXIT_OK
    if record.state is Phase.FAILED:
        return EXIT_FAILED
    if record.state is Phase.DONE and record.recoverable_errors:
        return EXIT_RECOVERABLE
    return EXIT_OK


def _seconds(stamp: Any) -> float | None:
    try:
        return parse_utc(stamp).timestamp()
    except (TypeError, ValueError, AttributeError):
        return None


# ---- the document ------------------------------------------------------------------------------------------

def document(record: Record | None, pid: int | None, disabled: str | None = None, *,
             config_error: ConfigError | None = None, now: float | None = None,
             booted: float | None = None, state_dir: Path | None = None) -> dict[str, Any]:
    """The `--status --json` document. Pure: every fact about the machine is an argument."""
    now = time.time() if now is None else now
    data: dict[str, Any] = dict.fromkeys(KEYS)
    data.update(schema=SCHEMA, boot_attempts=0, attempts=0, history=[], steps={}, recoverable_errors=[],
                running=False, interrupted=False, disabled_reason=disabled,
                config_error=config_error.as_dict() if config_error else None)
    if record is None:
        data["running"] = pid is not None
        data["pid"] = pid
        if disabled and pid is None:
            data.update(state="disabled", detail=f"azprov is disabled: {disabled}; it does not run")
        else:
            where = f" in {state_dir}" if state_dir else ""
            data.update(state="not_started", detail=(
                f"no record yet{where}; a run is starting (pid {pid})" if pid is not None
                else f"no record{where}: azprov has not run on this VM yet"))
        return data
    data.update(to_json(record))
    state = record.state.value
    running = record.state not in TERMINAL and pid is not None
    interrupted = record.state not in TERMINAL and pid is None
    data.update(running=running, pid=pid if running else None, interrupted=interrupted)
    data["history"] = _with_last_duration(list(record.history), record, running, now)
    reason = (record.last_error or {}).get("reason")
    if running:
        data["detail"] = f"provisioning is running (pid {pid}), in {state}"
    elif interrupted:
        data["detail"] = (f"interrupted in {state} on an earlier boot; this boot's run resumes it"
                          if _earlier_boot(data, booted) else
                          f"interrupted: the run stopped in {state} before it finished (SIGTERM, crash or "
                          "power cut) and no run holds the lock; the next run (a reboot, or "
                          "`systemctl restart azprov`) resumes it")
        if disabled:
            data.update(state="disabled", detail=f"azprov is disabled: {disabled}; the record was left "
                        f"unfinished in {state}")
    elif record.state is Phase.FAILED:
        data["detail"] = f"provisioning failed: {reason}" if isinstance(reason, str) else "provisioning failed"
    else:
        count = len(record.recoverable_errors)
        data["detail"] = "provisioning finished" + (f" with {count} recoverable error(s)" if count else "")
    return data


def _with_last_duration(history: list[dict[str, Any]], record: Record, running: bool,
                        now: float) -> list[dict[str, Any]]:
    """The last entry's `duration_s`: 0 for done/failed (an end lasts no time), the seconds so far while a
    run is in it, the seconds until the record's last save when it was interrupted. Never stored: the
    record holds only what the run measured."""
    if not history or isinstance(history[-1].get("duration_s"), (int, float)):
        return history
    last = dict(history[-1])
    entered = _seconds(last.get("at"))
    if record.state in TERMINAL:
        last["duration_s"] = 0.0
    elif entered is not None:
        until = now if running else _seconds(record.updated_at)
        last["duration_s"] = round(max(0.0, until - entered), 3) if until is not None else None
    else:
        last["duration_s"] = None
    return history[:-1] + [last]


def code_of(data: dict[str, Any]) -> int:
    """The exit code of a document (a broken record: 1, or 77 for a permission problem, set by `snapshot`)."""
    state = data.get("state")
    if state == "failed":
        return EXIT_FAILED
    if state == "done":
        return EXIT_RECOVERABLE if data.get("recoverable_errors") else EXIT_OK
    if state == "unknown":
        return EXIT_FAILED
    if data.get("interrupted") and state != "disabled":
        return EXIT_INTERRUPTED
    return EXIT_OK


def _permission_problem(e: StateFileError) -> bool:
    cause = e.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM):
        return True
    # A root-owned record in a directory others can search: refused as "another user's", but the cure is root.
    return e.reason == "state record is owned by another user" and os.geteuid() != 0


def snapshot(state_file: Path, root: Path, config_error: ConfigError | None = None,
             cmdline: Path = CMDLINE,
             booted: Callable[[], float | None] = boot_time) -> tuple[dict[str, Any], int]:
    """The document and exit code, from the record, the lock table and the opt-out switches."""
    state_dir = state_file.parent
    disabled = disabled_reason(root, cmdline)
    pid = lock_holder(state_dir)
    try:
        check_state_dir(state_dir, owner=os.geteuid() == 0)  # another user's is ordinary for a non-root reader
        record = load(state_file)
    except StateFileError as e:
        data = document(None, None, disabled, config_error=config_error)
        data.update(running=pid is not None, pid=pid, state="unknown", last_error=e.as_dict(),
                    boot_attempts=None, attempts=None)
        if _permission_problem(e):
            data["detail"] = f"the record cannot be read: {e}; run as root"
            return data, EXIT_NOPERM
        data["detail"] = (f"{e}: runs provision without a record, so every boot provisions again until it "
                          "is fixed" if e.reason.startswith("state directory") else
                          f"the record cannot be used: {e}; the next run moves it aside and starts afresh")
        return data, EXIT_FAILED
    data = document(record, pid, disabled, config_error=config_error, booted=booted(), state_dir=state_dir)
    return data, code_of(data)


def _earlier_boot(data: dict[str, Any], booted: float | None) -> bool:
    """The record was last saved before this boot began: the unit runs on every boot until DONE, so this
    boot's run will resume it. (Judged by the wall clock: a clock stepped forward by more than the run's
    uptime makes a record of this boot look older; `--wait --timeout` bounds that case.)"""
    updated = _seconds(data.get("updated_at"))
    return booted is not None and updated is not None and updated < booted


def settled(data: dict[str, Any], booted: float | None = None) -> bool:
    """For `--wait`: nothing more will happen without someone acting. Not started, running, or interrupted
    on an earlier boot (this boot's run resumes it) keep us waiting."""
    if data["running"]:
        return False
    if data["state"] in ("done", "failed", "disabled", "unknown"):
        return True
    return bool(data["interrupted"]) and not _earlier_boot(data, booted)


def wait(state_file: Path, root: Path, timeout: float | None, config_error: ConfigError | None = None,
         progress: TextIO | None = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic, interval: float = 0.2,
         cmdline: Path = CMDLINE,
         booted: Callable[[], float | None] = boot_time) -> tuple[dict[str, Any], int]:
    """Poll until `settled`; say on `progress` each time the state changes, and every 30 s that we still
    wait. Exit 124 once `timeout` seconds have passed."""
    progress = progress or sys.stderr
    started = clock()
    said, said_at = "", started
    boot = booted()  # once: it does not change while we wait
    while True:
        data, code = snapshot(state_file, root, config_error, cmdline, lambda: boot)
        if settled(data, boot):
            return data, code
        now = clock()
        line = f"azprov: waiting: {headline(data)}"
        if line != said or now - said_at >= 30:
            print(line + (f" ({now - started:.0f}s)" if line == said else ""), file=progress, flush=True)
            said, said_at = line, now
        if timeout is not None and now - started >= timeout:
            print(f"azprov: gave up waiting after {timeout:g}s: {data['detail']}", file=progress, flush=True)
            return data, EXIT_TIMEOUT
        sleep(interval if timeout is None else max(0.0, min(interval, timeout - (now - started))))


# ---- the views ---------------------------------------------------------------------------------------------

def as_json(record: Record | None, state_dir: Path) -> dict[str, Any]:
    """The document for a record already loaded (no opt-out view)."""
    return document(record, lock_holder(state_dir), state_dir=state_dir, booted=boot_time())


def render(record: Record | None, state_dir: Path, long: bool = False) -> str:
    return render_document(as_json(record, state_dir), long)


def command(state_file: Path, root: Path, *, as_json_output: bool = False, long: bool = False,
            wait_for_end: bool = False, timeout: float | None = None, pool: Path | None = None,
            config_error: ConfigError | None = None, out: TextIO | None = None,
            progress: TextIO | None = None) -> int:
    """The whole `--status`: print the view, return the exit code."""
    out, progress = out or sys.stdout, progress or sys.stderr
    if wait_for_end:
        data, code = wait(state_file, root, timeout, config_error, progress)
    else:
        data, code = snapshot(state_file, root, config_error)
    if as_json_output:
        if pool is not None:
            data["kvp"] = kvp_json(pool)
        print(json.dumps(data, sort_keys=True, indent=2), file=out)
    else:
        text = render_document(data, long)
        if pool is not None:
            from statemachine.kvp import format_pool

            text += "\nkvp pool:\n" + format_pool(pool)
        print(text, file=out)
        if code == EXIT_NOPERM:
            print("azprov: permission denied reading the record: run as root (sudo azprov status)", file=progress)
    return code


def kvp_json(pool: Path) -> dict[str, Any]:
    """The pool decoded (split values rejoined), or why it could not be read."""
    from statemachine.kvp import decode_pool

    try:
        records = decode_pool(pool.read_bytes())
    except OSError as e:
        return {"path": str(pool), "error": e.strerror or str(e)}
    return {"path": str(pool), "records": [r._asdict() for r in records]}

