"""`azprov clean`: make a provisioned VM ready to be captured as an image again.

Removes what azprov keeps in `paths.state_dir` (the record, set-aside records, saved CustomData), and on
request azprov's log files under `<root>/var/log` and the machine id (`<root>/etc/machine-id` becomes
`uninitialized`, so systemd treats the next boot as a first boot, and dbus's copy in /var/lib/dbus becomes a
symlink to it, so systemd cannot seed the new id from the old one). It refuses while a run holds the lock:
it takes the same flock, non-blocking, and keeps it while it works so no run starts halfway. It returns
what it removed, for the CLI to say. Everything goes through `statemachine.fs`: a symlinked state dir,
`/var/log` or `/var/lib/dbus` is refused, never followed, so nothing outside the state dir and
`paths.root` is touched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from statemachine import fs
from statemachine.config import Config
from statemachine.errors import ConfigureError, LockError
from statemachine.lock import RunLock
from statemachine.persistence import LOCK_FILE

LOG_PATTERNS = ("azprov.log*", "azprov")  # under <root>/var/log: files, rotations, a directory
MACHINE_ID = "/etc/machine-id"
# systemd seeds a first boot's machine id from dbus's copy when that is a regular file with a valid id, so a
# copy left in the image would give every VM made from it the same id (the boot test checks this).
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"


@contextmanager
def _refusals(what: str) -> Iterator[None]:
    """A planted link (or an I/O error) stops `clean` with exit 1 and says where."""
    try:
        yield
    except fs.Refused as e:
        raise ConfigureError(f"{what}: {e.reason}", **e.supporting_data) from e
    except OSError as e:
        raise ConfigureError(f"{what}: cannot change it", path=str(e.filename), error=e.strerror) from e


def _remove(base: Path, rel: str) -> str:
    with _refusals("cannot remove"):
        fs.remove(base, rel)
    return str(base / rel)


def records(state_dir: Path) -> list[str]:
    """Everything azprov keeps in its state dir, except the lock file itself (names)."""
    with _refusals("state directory"):
        return [n for n in fs.names(state_dir.parent, state_dir.name) if n != LOCK_FILE]


def log_files(root: Path) -> list[str]:
    with _refusals("log directory"):
        names = fs.names(root, "var/log")
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in LOG_PATTERNS))


def reset_machine_id(root: Path) -> str | None:
    rel = MACHINE_ID.lstrip("/")
    path = root / rel
    try:
        found = fs.read_file(root, rel, 4096)
    except fs.Refused as e:
        raise ConfigureError("machine id is a symlink or not a plain file; refusing to write through it",
                             **e.supporting_data) from e
    except OSError as e:
        raise ConfigureError("machine id is unreadable", path=str(path), error=e.strerror) from e
    if found is not None and found.data == b"uninitialized\n":
        return None
    with _refusals("machine id cannot be written"):
        fs.atomic_write(root, rel, b"uninitialized\n", 0o444)
    return f"created {path} ('uninitialized')" if found is None else f"{path} (now 'uninitialized')"


def unlink_dbus_machine_id(root: Path) -> str | None:
    """Replace dbus's own copy of the machine id by a symlink to /etc/machine-id (what current Debian ships),
    so the next boot's new id is the only one there is."""
    rel = DBUS_MACHINE_ID.lstrip("/")
    with _refusals("dbus machine id cannot be replaced"):
        try:
            fs.check_plain(root, rel)
        except fs.Refused as e:
            if str(e.supporting_data.get("found", "")).startswith("a symlink"):
                return None  # a link already (to /etc/machine-id, or the admin's choice): left alone
            raise
        if not fs.exists(root, rel):
            return None
        fs.symlink(root, rel, MACHINE_ID)
    return f"{root / rel} (now a symlink to {MACHINE_ID})"


def clean(config: Config, logs: bool = False, machine_id: bool = False) -> list[str]:
    """Remove azprov's records (and optionally logs and the machine id); what was removed, in order."""
    state_dir = config.state_dir
    root = Path(config.paths.root)
    lock = RunLock(state_dir / LOCK_FILE)
    names = records(state_dir)  # refuses a state dir that is a link before anything is locked or removed
    if state_dir.is_dir():
        if not lock.try_acquire():
            raise LockError("a provisioning run holds the lock; not cleaning", lock=str(lock.path),
                            pid=lock.holder())
        names = records(state_dir)  # again, now that no run can add one
    try:
        removed = [_remove(state_dir.parent, f"{state_dir.name}/{n}") for n in names]
        if logs:
            removed += [_remove(root, f"var/log/{n}") for n in log_files(root)]
        if machine_id:
            removed += [done for done in (reset_machine_id(root), unlink_dbus_machine_id(root)) if done]
        return removed
    finally:
        lock.release()
