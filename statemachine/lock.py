"""One run at a time: an flock on `<state_dir>/lock`.

`azprov --status` never takes it (it only reads the record, which is replaced atomically). A second run
waits for the first to finish, then sees its record: DONE means nothing left to do. The lock dies with the
process, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from statemachine.errors import LockError


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
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
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise LockError("lock file cannot be opened", lock=str(self.path), error=e.strerror) from e
