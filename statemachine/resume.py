"""Does this boot provision, and as which VM: the opt-out switches, when this boot began, the VM id, and
where a run starts from the record it finds. No `transitions` import: a provisioned VM's later boots stay
cheap.

Opt-out: the unit file enforces the marker `/etc/azprov/disabled` (looked up under `paths.root`, where an
image build points it) and `azprov=disabled` on the kernel command line with systemd conditions, so a
disabled agent never starts; `disabled_reason` states them for what runs anyway (`azprov --status` on an
opted-out VM says "disabled", not "has not run yet").

The VM id is the SMBIOS product UUID, normalised the way the platform's `compute.vmId` is: on Gen1 (BIOS)
VMs Hyper-V exposes the first three UUID fields byte-swapped relative to `vmId`; Gen2 (UEFI,
/sys/firmware/efi present) does not. Old kernels report upper case. Where SMBIOS is absent (containers,
some hypervisors) or holds the all-zero or all-FF placeholder, the id comes from IMDS `compute.vmId`
(`vm_id_source = "imds"`).

The run's start: fresh: no record. new_vm: the record names another VM id (a new VM made from the image).
done: nothing to do. give_up: FAILED with every boot attempt used. retry_failed: FAILED with attempts left;
the runner fires `retry_after_failure` (the machine's guarded transition back to NETWORK_WAIT). resume: a
run was cut short (power cut, SIGTERM); continue from the recorded phase, since every step is idempotent.
"""

from __future__ import annotations

import re
from pathlib import Path

from statemachine.machine import Phase, ends_run, is_terminal
from statemachine.persistence import Record
from statemachine.text import parse_utc

MARKER = "etc/azprov/disabled"
CMDLINE = Path("/proc/cmdline")
KERNEL_ARGUMENT = "azprov=disabled"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# SMBIOS's "not present" and "not set": shared by every VM that has them, so no identity at all.
PLACEHOLDERS = frozenset({"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"})


# ---- this boot: is azprov switched off, when did it begin --------------------------------------------------

def kernel_disabled(cmdline: str) -> bool:
    """`azprov=disabled` as a word of the kernel command line (as systemd's condition matches it)."""
    return KERNEL_ARGUMENT in cmdline.split()


def disabled_reason(root: Path, cmdline: Path = CMDLINE) -> str | None:
    """Why azprov is switched off, or None when it is not. Unreadable files count as "not disabled"."""
    marker = root / MARKER
    try:
        if marker.exists() or marker.is_symlink():
            return f"marker file {marker} exists"
    except OSError:
        pass
    try:
        text = cmdline.read_text(errors="replace")
    except OSError:
        return None
    return f"{KERNEL_ARGUMENT} on the kernel command line" if kernel_disabled(text) else None


def boot_time(proc_stat: Path = Path("/proc/stat")) -> float | None:
    """Wall-clock time of this boot (`btime` in /proc/stat), or None when it cannot be read."""
    try:
        lines = proc_stat.read_text().splitlines()
        return next((float(line.split()[1]) for line in lines if line.startswith("btime ")), None)
    except (OSError, ValueError, IndexError):
        return None


# ---- which VM is this --------------------------------------------------------------------------------------

def normalize(raw: str, gen1: bool) -> str | None:
    """Pure: the vmId for a raw product_uuid, or None when it is not a UUID or is a placeholder."""
    text = raw.strip()
    if not _UUID.fullmatch(text) or text.lower() in PLACEHOLDERS:
        return None
    raw_bytes = bytes.fromhex(text.replace("-", ""))
    # Gen1: swap the first three fields back, as uuid.UUID(bytes_le=...) would, without importing `uuid` at boot.
    if gen1:
        raw_bytes = raw_bytes[3::-1] + raw_bytes[5:3:-1] + raw_bytes[7:5:-1] + raw_bytes[8:]
    h = raw_bytes.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_vm_id(product_uuid_path: Path, efi_path: Path) -> str | None:
    try:
        raw = product_uuid_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return normalize(raw, gen1=not efi_path.exists())


# ---- where the run starts ----------------------------------------------------------------------------------


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
