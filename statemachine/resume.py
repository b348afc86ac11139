"""Where a run starts, decided from the record it finds: pure functions, no I/O, no `transitions` import
(so a provisioned VM's later boots stay cheap).

fresh: no record. new_vm: the record names another VM id (a new VM made from the image). done: nothing to
do. retry_failed: a FAILED record with boot attempts left starts again at NETWORK_WAIT. give_up: attempts
exhausted, stay FAILED. resume: continue from the recorded phase; every step is idempotent.
"""

from __future__ import annotations

from statemachine.persistence import Record
from statemachine.phase import Phase
from statemachine.timeutil import parse_utc


def fresh_record(vm_id: str | None, now: str) -> Record:
    return Record(vm_id=vm_id, vm_id_source="smbios" if vm_id else None, created_at=now, updated_at=now,
                  history=({"state": Phase.NETWORK_WAIT.value, "at": now, "event": "start"},))


def plan_start(record: Record | None, vm_id: str | None, max_boot_attempts: int, now: str) -> tuple[str, Record]:
    """What this run does with the record it found: fresh, new_vm, done, give_up, retry_failed or resume."""
    if record is None:
        return "fresh", fresh_record(vm_id, now)
    if vm_id is not None and record.vm_id is not None and record.vm_id != vm_id:
        return "new_vm", fresh_record(vm_id, now)
    if vm_id is not None and record.vm_id is None:  # a record without identity proves nothing
        return "new_vm", fresh_record(vm_id, now)
    if record.state is Phase.DONE:
        return "done", record
    if record.state is Phase.FAILED:
        if record.boot_attempts >= max_boot_attempts:
            return "give_up", record
        entry = {"state": Phase.NETWORK_WAIT.value, "at": now, "event": "retry_after_failure"}
        return "retry_failed", record._replace(
            state=Phase.NETWORK_WAIT, boot_attempts=record.boot_attempts + 1, attempts=0,
            failure_reported_at=None, history=(*record.history, entry))
    return "resume", record


def with_transition(record: Record, state: Phase, event: str, now: str) -> Record:
    """Append a history entry, closing the previous one with its duration."""
    history = list(record.history)
    if history:
        last = dict(history[-1])
        try:
            last["duration_s"] = round((parse_utc(now) - parse_utc(str(last["at"]))).total_seconds(), 3)
        except (KeyError, ValueError):
            pass
        history[-1] = last
    history.append({"state": state.value, "at": now, "event": event})
    return record._replace(state=state, attempts=0, history=tuple(history), updated_at=now)
