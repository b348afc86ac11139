"""One run at a time: an flock on `<state_dir>/lock`, and who holds it (`lock_holder`, for `--status`).

`azprov --status` never takes it (it only reads the record, which is replaced atomically). A second run
waits for the first to finish, then sees its record: DONE means nothing left to do. The lock dies with the
process, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from statemachine.errors import LockError
from statemachine.persistence import LOCK_FILE

_UNWRITABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._on_file = True

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        if self._on_file:
            try:  # only for `--status` ("running") and the waiting run's message: a full disk may refuse it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
        return True

    def acquire(self, timeout: float, on_wait: Callable[[str], None] = lambda holder: None,
                sleep: Callable[[float], None] = time.sleep) -> None:
        """Wait up to `timeout` seconds for the lock; say once who holds it."""
        deadline = time.monotonic() + timeout
        told = False
        while not self.try_acquire():
            if not told:
                on_wait(self.holder())
                told = True
            if time.monotonic() >= deadline:
                raise LockError("another azprov run holds the lock", lock=str(self.path), pid=self.holder())
            sleep(0.05)

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._on_file = True
            return fd
        except OSError as e:
            if e.errno not in _UNWRITABLE:
                raise LockError("lock file cannot be opened", lock=str(self.path), error=e.strerror) from e
        # A state directory that refuses writes must not cost the Ready: flock the directory itself, which
        # needs no write. Every run on this boot sees the same file system, so they all lock the same way.
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise LockError("lock file cannot be opened", lock=str(self.path), error=e.strerror) from e
        self._on_file = False
        return fd


def lock_holder(state_dir: Path, locks: Path = Path("/proc/locks")) -> int | None:
    """The pid holding the run's flock (on the lock file, or on the directory where the file cannot be
    written), from the kernel's lock table; None when nobody holds it. Without /proc/locks, the pid the run
    wrote into the lock file, if that process still looks like azprov."""
    inodes = set()
    for path in (state_dir / LOCK_FILE, state_dir):
        try:
            st = os.stat(path)
        except OSError:
            continue
        inodes.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    if not inodes:
        return None
    try:
        table = locks.read_text()
    except OSError:
        return _pid_from_lock_file(state_dir)
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's line has "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] in inodes:
            try:
                return int(fields[4])
            except ValueError:
                return 0
    return None


def _pid_from_lock_file(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / LOCK_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and (b"azprov" in cmdline or b"statemachine" in cmdline) else None
