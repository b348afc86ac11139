"""The persisted record: what a later boot needs to resume, and what `azprov --status` shows.

Owns the JSON schema, the save (`fs.atomic_write`: 0600 in a 0700 directory, never through a link) and a
defensive load (`text.decode_json`: anything JSON-invalid, NaN, 1e999 or a 5000-digit number is refused).
It never decides what a record means for the run: that is the runner's job.
A record that cannot be trusted (not JSON, unknown schema, wrong types, a symlink, someone else's file)
raises `StateFileError`; `quarantine()` moves it aside as `*.corrupt-<time>` so provisioning can start fresh
and the evidence survives for support.

During a run (`Store`, `prepare_state_dir`, `load_or_set_aside`) every disk problem degrades instead of
losing the Ready: when the disk refuses (read-only, full, not ours), the run carries on in memory and says
so once. Reporting Ready matters more than remembering it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from statemachine import fs
from statemachine.errors import StateFileError
from statemachine.failpoints import failpoint
from statemachine.log import fields
from statemachine.machine import Phase
from statemachine.text import clean_json, decode_json

SCHEMA = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"
MAX_RECORD_BYTES = 1 << 20  # a record is a few KiB; anything near this is not ours

log = logging.getLogger("azprov")


class Record(NamedTuple):
    state: Phase = Phase.NETWORK_WAIT
    vm_id: str | None = None
    vm_id_source: str | None = None  # "smbios" or "imds"
    incarnation: str | None = None
    container_id: str | None = None
    instance_id: str | None = None
    boot_attempts: int = 1  # runs that (re)started provisioning from NETWORK_WAIT
    runs: int = 1  # runs that did provisioning work (fresh, resumed or retried); a later boot adds none
    attempts: int = 0  # retries in the current phase
    reported_ready_at: str | None = None
    failure_reported_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    last_error: dict[str, Any] | None = None
    recoverable_errors: tuple[dict[str, Any], ...] = ()
    # Read-only default: a NamedTuple's default is shared by every record. Updates build a new dict.
    steps: Mapping[str, Mapping[str, Any]] = MappingProxyType({})


# JSON type each field must have (after None where the default is None).
_STR, _INT = (str,), (int,)
_TYPES: dict[str, tuple[type, ...]] = {
    "state": _STR, "vm_id": _STR, "vm_id_source": _STR, "incarnation": _STR, "container_id": _STR,
    "instance_id": _STR, "boot_attempts": _INT, "runs": _INT, "attempts": _INT, "reported_ready_at": _STR,
    "failure_reported_at": _STR, "created_at": _STR, "updated_at": _STR, "history": (list,),
    "last_error": (dict,), "recoverable_errors": (list,), "steps": (dict,),
}


# Keys inside the nested objects that the runner and `--status` read, with the JSON types they must have.
# Other keys are kept as they are (later versions may add some).
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,), "at": (str,), "event": (str,), "duration_s": (int, float),  # history entries
    "reason": (str,), "data": (dict,), "step": (str,),  # errors
    "status": (str,), "result": (str,), "error": (dict,),  # configure steps
}


def _check_entry(entry: Any, field: str) -> None:
    if not isinstance(entry, dict):
        raise StateFileError("state record field has the wrong type", field=field, got=type(entry).__name__)
    for key, types in ENTRY_TYPES.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise StateFileError("state record field has the wrong type", field=f"{field}.{key}",
                                 got=type(value).__name__)
    if isinstance(entry.get("error"), dict):
        _check_entry(entry["error"], f"{field}.error")


def to_json(record: Record) -> dict[str, Any]:
    data = record._asdict()
    data["state"] = record.state.value
    data["steps"] = {name: dict(step) for name, step in record.steps.items()}
    data["history"] = list(record.history)
    data["recoverable_errors"] = list(record.recoverable_errors)
    return {"schema": SCHEMA, **data}


def from_json(data: Any) -> Record:
    """Validate a decoded document into a Record. Pure; raises only StateFileError."""
    if not isinstance(data, dict):
        raise StateFileError("state record is not a JSON object", got=type(data).__name__)
    if data.get("schema") != SCHEMA:
        raise StateFileError("state record has an unknown schema", schema=data.get("schema"), expected=SCHEMA)
    values: dict[str, Any] = {}
    for name, types in _TYPES.items():
        if name not in data:
            continue
        value = data[name]
        if value is None and name not in ("state", "boot_attempts", "runs", "attempts", "history", "steps",
                                          "recoverable_errors"):
            values[name] = None
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise StateFileError("state record field has the wrong type", field=name, got=type(value).__name__)
        values[name] = value
    try:
        values["state"] = Phase(values.get("state", Phase.NETWORK_WAIT.value))
    except ValueError as e:
        raise StateFileError("state record names an unknown state", state=values.get("state")) from e
    for name in ("history", "recoverable_errors"):
        items = values.get(name, [])
        if not all(isinstance(i, dict) for i in items):
            raise StateFileError("state record field has the wrong type", field=name, got="list of non-objects")
        values[name] = tuple(items)
    if any(n < 0 for n in (values.get("attempts", 0), values.get("boot_attempts", 1), values.get("runs", 1))):
        raise StateFileError("state record has a negative counter")
    if not all(isinstance(v, dict) for v in values.get("steps", {}).values()):
        raise StateFileError("state record field has the wrong type", field="steps", got="non-object step")
    for name in ("history", "recoverable_errors"):
        for entry in values[name]:
            _check_entry(entry, name)
    if values.get("last_error") is not None:
        _check_entry(values["last_error"], "last_error")
    for step_name, step in values.get("steps", {}).items():
        _check_entry(step, f"steps.{step_name}")
    return Record(**values)


def ensure_state_dir(state_dir: Path) -> None:
    """Create the directory 0700 (whatever the umask), and refuse one that is a link, that we do not own
    or that others may write to."""
    try:
        state_dir.parent.mkdir(parents=True, exist_ok=True)  # /var/lib: the system's, trusted as given
        if not os.path.lexists(state_dir):
            fs.make_dir(state_dir.parent, state_dir.name, 0o700)
    except fs.Refused as e:
        raise StateFileError("state directory is not a directory", path=str(state_dir),
                             found=e.supporting_data.get("found")) from e
    except OSError as e:
        raise StateFileError("state directory cannot be created", path=str(state_dir), error=e.strerror) from e
    st = check_state_dir(state_dir)
    if st is not None and st.st_mode & 0o077:
        try:
            os.chmod(state_dir, 0o700)  # ours, but too open: tighten rather than refuse
        except OSError as e:
            raise StateFileError("state directory mode cannot be fixed", path=str(state_dir),
                                 error=e.strerror) from e


def check_state_dir(state_dir: Path, *, owner: bool = True) -> os.stat_result | None:
    """Refuse what a run refuses in a state directory, creating and changing nothing (`--status` asks too,
    so that it never reads a record through a planted link): a link or anything else that is not a
    directory, and with `owner` one owned by another user. None: there is none yet."""
    try:
        st = os.lstat(state_dir)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError("state directory cannot be read", path=str(state_dir), error=e.strerror) from e
    if not stat.S_ISDIR(st.st_mode):
        try:
            parent = os.open(state_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
            found: str | None = fs.what_is(parent, state_dir.name)
            os.close(parent)
        except OSError:
            found = None
        raise StateFileError("state directory is not a directory", path=str(state_dir), found=found)
    if owner and st.st_uid != os.geteuid():
        raise StateFileError("state directory is owned by another user", path=str(state_dir), uid=st.st_uid)
    return st


def read_bytes(path: Path) -> bytes | None:
    """The record's raw bytes, or None when there is none. Never follows a symlink."""
    try:
        found = fs.read_file(path.parent, path.name, MAX_RECORD_BYTES, owner=os.geteuid(), private=True)
    except fs.Refused as e:
        what = str(e.supporting_data.get("found", ""))
        if what.startswith("a symlink"):
            raise StateFileError("state record is a symlink; refusing to follow it", path=str(path)) from e
        if "uid" in e.supporting_data:
            raise StateFileError("state record is owned by another user", path=str(path),
                                 uid=e.supporting_data["uid"]) from e
        if "mode" in e.supporting_data:
            raise StateFileError("state record is writable by others", path=str(path),
                                 mode=e.supporting_data["mode"]) from e
        if "limit" in e.supporting_data:
            raise StateFileError("state record is too large", path=str(path), limit=MAX_RECORD_BYTES) from e
        raise StateFileError("state record is not a regular file", path=str(path), found=what) from e
    except OSError as e:
        raise StateFileError("state record is unreadable", path=str(path), error=e.strerror) from e
    return None if found is None else found.data


def load(path: Path) -> Record | None:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        document = decode_json(data)
    except ValueError as e:
        raise StateFileError("state record is not valid JSON", path=str(path), error=str(e)) from e
    return from_json(document)


def dumps(record: Record) -> str:
    """The record as saved: every text made representable first (text.clean_json), so any record saves."""
    return json.dumps(clean_json(to_json(record)), sort_keys=True, indent=1, ensure_ascii=False,
                      allow_nan=False) + "\n"


def save(path: Path, record: Record) -> None:
    text = dumps(record)
    failpoint("persist.before_write")
    try:
        fs.atomic_write(path.parent, path.name, text.encode("utf-8"), 0o600, dir_mode=0o700,
                        before_rename=lambda: failpoint("persist.before_rename"),
                        after_rename=lambda: failpoint("persist.after_rename"))
    except fs.Refused as e:
        raise StateFileError("state record cannot be written", path=str(path), **e.supporting_data) from e
    except OSError as e:
        raise StateFileError("state record cannot be written", path=str(path), error=e.strerror) from e


def set_aside(path: Path, suffix: str) -> Path | None:
    """Rename the record (or a symlink in its place, without following it) to `<name>.<suffix>`."""
    target = path.with_name(f"{path.name}.{suffix}")
    try:
        moved = fs.rename(path.parent, path.name, target.name)
    except (OSError, fs.Refused) as e:
        raise StateFileError("state record cannot be moved aside", path=str(path),
                             error=getattr(e, "strerror", None) or str(e)) from e
    return target if moved else None


def remove_stale_temps(path: Path) -> list[str]:
    """Delete temp files a crashed save left beside the record (killed between write and rename).

    Only call this while holding the run lock: another run's temp file is not stale while it is saving.
    Best effort: a leftover we cannot remove costs disk space, not correctness."""
    removed = []
    try:
        entries = fs.names(path.parent)
    except (OSError, fs.Refused):
        return []
    for name in entries:
        if fnmatch.fnmatchcase(name, f".{path.name}-*.tmp"):
            try:
                fs.remove(path.parent, name)
                removed.append(name)
            except (OSError, fs.Refused):
                pass
    return removed


def quarantine(path: Path) -> Path | None:
    return set_aside(path, "corrupt-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


# ---- during a run: degrade, never lose the Ready ------------------------------------------------------------

class Store:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False: the state directory is unusable, keep everything in memory
        self.failed: StateFileError | None = None

    def save(self, record: Record) -> None:
        if not self.enabled:
            return
        try:
            save(self.path, record)
        except StateFileError as e:
            if self.failed is None:
                log.error("state record cannot be saved; continuing without persistence",
                          extra=fields(reason=str(e)))
            self.failed = e
        except Exception as e:  # a bug in saving must not cost the Ready either: loud, once, then in memory
            if self.failed is None:
                log.exception("saving the state record failed unexpectedly; continuing without persistence")
            self.failed = StateFileError("state record cannot be saved", path=str(self.path),
                                         error=type(e).__name__)


def prepare_state_dir(state_dir: Path) -> bool:
    """A state directory we cannot create or trust must not cost the Ready: provision without a record
    (the next boot starts over, and every step is idempotent) and say so loudly."""
    try:
        ensure_state_dir(state_dir)
    except StateFileError as e:
        log.error("state directory is unusable; provisioning without a record (the next boot starts over)",
                  extra=fields(reason=str(e)))
        return False
    return True


def load_or_set_aside(state_file: Path) -> Record | None:
    """The record, or None; a broken one is moved aside (the evidence survives) and provisioning starts fresh."""
    stale = remove_stale_temps(state_file)
    if stale:
        log.info("removed temp files of an interrupted save", extra=fields(files=stale))
    try:
        return load(state_file)
    except StateFileError as e:
        try:
            moved = quarantine(state_file)
        except StateFileError as not_moved:  # read-only: the save that follows will fail and say so too
            moved = None
            log.error("broken state record cannot be moved aside", extra=fields(reason=str(not_moved)))
        log.error("state record is broken; moved aside, provisioning starts fresh",
                  extra=fields(reason=str(e), moved_to=str(moved)))
        return None
