"""Saving the record during a run, degrading instead of losing the Ready: when the disk refuses (read-only,
full), the run carries on in memory and says so once. Reporting Ready matters more than remembering it."""

from __future__ import annotations

import logging
from pathlib import Path

from statemachine import persistence
from statemachine.errors import StateFileError
from statemachine.log import fields
from statemachine.persistence import Record

log = logging.getLogger("azprov")


class Store:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False: the state directory is unusable, keep everything in memory
        self.failed: StateFileError | None = None

    def save(self, record: Record) -> None:
        if not self.enabled:
            return
        try:
            persistence.save(self.path, record)
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
