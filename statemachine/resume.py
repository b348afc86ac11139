"""Where a run starts, decided from the record it finds, and what a transition writes into the record.
Pure functions, no I/O, no `transitions` import (a provisioned VM's later boots stay cheap).

fresh: no record. new_vm: the record names another VM id (a new VM made from the image). done: nothing to
do. give_up: FAILED with every boot attempt used. retry_failed: FAILED with attempts left; the runner fires
`retry_after_failure` (the machine's guarded transition back to NETWORK_WAIT). resume: a run was cut
short (power cut, SIGTERM); continue from the recorded phase, since every step is idempotent.
"""

from __future__ import annotations

from statemachine.machine import Phase, ends_run, is_terminal
from statemachine.persistence import Record
from statemachine.text import parse_utc


def fresh_record(vm_id: str | None, now: str) -> Record:
    return Record(vm_id=vm_id, vm_id_source="smbios" if vm_id else None, created_at=now, updated_at=now,
                  history=({"state": Phase.NETWORK_WAIT.value, "at": now, "event": "start"},), runs=1)


def plan_start(record: Record | None, vm_id: str | None, max_boot_attempts: int, now: str) -> tuple[str, Record]:
    """What this run does with the record it found, and the record it starts from."""
    if record is None:
        return "fresh", fresh_record(vm_id, now)
    if vm_id is not None and record.vm_id is not None and record.vm_id != vm_id:
        return "new_vm", fresh_record(vm_id, now)
    if vm_id is not None and record.vm_id is None:  # a record without identity proves nothing
        return "new_vm", fresh_record(vm_id, now)
    if record.state is Phase.DONE:
        return "done", record
    if is_terminal(record.state, record.boot_attempts, max_boot_attempts):
        return "give_up", record
    record = record._replace(runs=record.runs + 1)
    if ends_run(record.state):
        return "retry_failed", record
    entry: dict[str, object] = {"state": record.state.value, "at": now, "event": "resumed"}
    return "resume", with_entry(record, entry)


def with_entry(record: Record, entry: dict[str, object]) -> Record:
    """Append a history entry, closing the previous one with its duration."""
    history = list(record.history)
    if history:
        last = dict(history[-1])
        try:
            last["duration_s"] = round((parse_utc(str(entry["at"])) - parse_utc(str(last["at"]))).total_seconds(), 3)
        except (KeyError, ValueError):
            pass
        history[-1] = last
    history.append(entry)
    return record._replace(history=tuple(history), updated_at=str(entry["at"]))


def with_transition(record: Record, state: Phase, event: str, now: str) -> Record:
    """The record after `event` moved it to `state`: a history entry, the phase's retries reset, and for a
    retried failure a new boot attempt whose failure is not yet reported."""
    entry: dict[str, object] = {"state": state.value, "at": now, "event": event}
    record = with_entry(record, entry)._replace(state=state, attempts=0)
    if event == "retry_after_failure":
        record = record._replace(boot_attempts=record.boot_attempts + 1, failure_reported_at=None)
    return record
