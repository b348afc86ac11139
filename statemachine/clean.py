"""`azprov clean`: make a provisioned VM ready to be captured as an image again.

Removes what azprov keeps in `paths.state_dir` (the record, set-aside records, saved CustomData), and on
request azprov's log files under `<root>/var/log` and the machine id (`<root>/etc/machine-id` becomes
`uninitialized`, so systemd treats the next boot as a first boot, and dbus's copy in /var/lib/dbus becomes a
symlink to it, so systemd cannot seed the new id from the old one). It refuses while a run holds the lock:
it takes the same flock, non-blocking, and keeps it while it works so no run starts halfway. It returns
what it removed, for the CLI to say. Never touches anything outside the state dir and `paths.root`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from statemachine.config import Config
from statemachine.errors import ConfigureError, LockError
from statemachine.fsutil import atomic_write
from statemachine.lock import RunLock
from statemachine.persistence import LOCK_FILE

LOG_PATTERNS = ("azprov.log*", "azprov")  # under <root>/var/log: files, rotations, a directory
MACHINE_ID = "/etc/machine-id"
# systemd seeds a first boot's machine id from dbus's copy when that is a regular file with a valid id, so a
# copy left in the image would give every VM made from it the same id (the boot test checks this).
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"


def _remove(path: Path) -> str:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as e:
        raise ConfigureError("cannot remove", path=str(path), error=e.strerror) from e
    return str(path)


def records(state_dir: Path) -> list[Path]:
    """Everything azprov keeps in its state dir, except the lock file itself."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.iterdir() if p.name != LOCK_FILE)


def log_files(root: Path) -> list[Path]:
    directory = root / "var" / "log"
    if not directory.is_dir():
        return []
    return sorted({p for pattern in LOG_PATTERNS for p in directory.glob(pattern)})


def reset_machine_id(root: Path) -> str | None:
    path = root / MACHINE_ID.lstrip("/")
    try:
        if path.read_text() == "uninitialized\n":
            return None
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ConfigureError("machine id is unreadable", path=str(path), error=e.strerror) from e
    if path.is_symlink():
        raise ConfigureError("machine id is a symlink; refusing to write through it", path=str(path))
    try:
        atomic_write(path, b"uninitialized\n", mode=0o444)
    except OSError as e:
        raise ConfigureError("machine id cannot be written", path=str(path), error=e.strerror) from e
    return f"{path} (now 'uninitialized')"


def unlink_dbus_machine_id(root: Path) -> str | None:
    """Replace dbus's own copy of the machine id by a symlink to /etc/machine-id (what current Debian ships),
    so the next boot's new id is the only one there is."""
    path = root / DBUS_MACHINE_ID.lstrip("/")
    if path.is_symlink() or not path.exists():
        return None
    try:
        path.unlink()
        path.symlink_to(MACHINE_ID)
    except OSError as e:
        raise ConfigureError("dbus machine id cannot be replaced", path=str(path), error=e.strerror) from e
    return f"{path} (now a symlink to {MACHINE_ID})"


def clean(config: Config, logs: bool = False, machine_id: bool = False) -> list[str]:
    """Remove azprov's records (and optionally logs and the machine id); what was removed, in order."""
    state_dir = config.state_dir
    root = Path(config.paths.root)
    lock = RunLock(state_dir / LOCK_FILE)
    if state_dir.is_dir():
        if not lock.try_acquire():
            raise LockError("a provisioning run holds the lock; not cleaning", lock=str(lock.path),
                            pid=lock.holder())
    try:
        removed = [_remove(p) for p in records(state_dir)]
        if logs:
            removed += [_remove(p) for p in log_files(root)]
        if machine_id:
            removed += [done for done in (reset_machine_id(root), unlink_dbus_machine_id(root)) if done]
        return removed
    finally:
        lock.release()
