"""The record on disk during a run: the state directory made ready, the record loaded (a broken one moved
aside), and every save. Each degrades instead of losing the Ready: when the disk refuses (read-only, full,
not ours), the run carries on in memory and says so once. Reporting Ready matters more than remembering it."""

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


def prepare_state_dir(state_dir: Path) -> bool:
    """A state directory we cannot create or trust must not cost the Ready: provision without a record
    (the next boot starts over, and every step is idempotent) and say so loudly."""
    try:
        persistence.ensure_state_dir(state_dir)
    except StateFileError as e:
        log.error("state directory is unusable; provisioning without a record (the next boot starts over)",
                  extra=fields(reason=str(e)))
        return False
    return True


def load(state_file: Path) -> Record | None:
    """The record, or None; a broken one is moved aside (the evidence survives) and provisioning starts fresh."""
    stale = persistence.remove_stale_temps(state_file)
    if stale:
        log.info("removed temp files of an interrupted save", extra=fields(files=stale))
    try:
        return persistence.load(state_file)
    except StateFileError as e:
        try:
            moved = persistence.quarantine(state_file)
        except StateFileError as not_moved:  # read-only: the save that follows will fail and say so too
            moved = None
            log.error("broken state record cannot be moved aside", extra=fields(reason=str(not_moved)))
        log.error("state record is broken; moved aside, provisioning starts fresh",
                  extra=fields(reason=str(e), moved_to=str(moved)))
        return None
