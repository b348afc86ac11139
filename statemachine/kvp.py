"""Hyper-V KVP: the record format of the guest pool file, a writer that appends to it, and what azprov
tells the host through it (`Telemetry`).

What the host sees of a VM that cannot be logged into comes through KVP: `hv_kvp_daemon` serves the records
of `/var/lib/hyperv/.kvp_pool_1` to the host on request.

- The record format (pure): 2560-byte records, a 512-byte key field and a 2048-byte value field, UTF-8,
  NUL-padded. The kernel converts to UTF-16 on the way out and stops at 255/1023 code units including the
  terminator (azure-init `doc/kvp.md`), so a key is at most 254 bytes and a value at most 1022 bytes.
  A longer value is split on UTF-8 character boundaries (the kernel rejects broken UTF-8) into parts 1..n
  under the keys `<key>|<i>/<n>`, in order, in one locked append: unique keys keep every part visible to
  the host, which sees the pool as a dictionary (cloud-init suffixes `|<i>` for the same reason).
  `decode_pool` rejoins a complete run of parts; an incomplete run is shown part by part.
- `KvpPool` appends under `flock(LOCK_EX)` (the lock cloud-init and azure-init take), truncates the pool
  once per boot when its mtime predates the boot (records of an earlier boot would mislead), and skips
  quietly when the pool's directory is absent (no Hyper-V KVP daemon: not Azure, or a container).
- `Telemetry`: an event per state entered and left, and the provisioning report; the texts are
  `statemachine.health`'s. `<run>` in an event key is random per process and `<seq>` counts the run's
  events, so keys never collide within a boot and sort in the order they were written.

KVP is best-effort: nothing here raises, or blocks provisioning for long; a disabled or absent pool makes
every call a no-op.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable, NamedTuple

from statemachine import fs
from statemachine.errors import AgentError, KvpError
from statemachine.health import REPORT_KEY, event_key, event_value, report_fields
from statemachine.log import fields
from statemachine.resume import boot_time
from statemachine.text import utc_now

log = logging.getLogger(__name__)

KEY_SIZE = 512  # HV_KVP_EXCHANGE_MAX_KEY_SIZE: width of the key field in the pool file
VALUE_SIZE = 2048  # HV_KVP_EXCHANGE_MAX_VALUE_SIZE
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
MAX_KEY_BYTES = 254  # what survives the kernel's UTF-8 -> UTF-16 conversion untruncated
MAX_VALUE_BYTES = 1022
DEFAULT_POOL = "/var/lib/hyperv/.kvp_pool_1"
LOCK_WAIT = 1.0  # seconds, once per run: a stuck lock holder must not stall provisioning

_PART = re.compile(r"^(?P<base>.*)\|(?P<i>[1-9][0-9]*)/(?P<n>[1-9][0-9]*)$", re.DOTALL)


class KvpRecord(NamedTuple):
    key: str
    value: str
    parts: int = 1  # how many pool records carried the value


# ---- pure encoding -----------------------------------------------------------------------------------------

def split_utf8(value: str, limit: int = MAX_VALUE_BYTES) -> list[bytes]:
    """UTF-8 chunks of at most `limit` bytes, never cutting a character apart. "" gives [b""]."""
    chunks: list[bytes] = []
    current = bytearray()
    for ch in value:
        encoded = ch.encode("utf-8")
        if len(current) + len(encoded) > limit:
            chunks.append(bytes(current))
            current = bytearray()
        current += encoded
    chunks.append(bytes(current))
    return chunks


def _check_key(key: str) -> bytes:
    try:
        raw = key.encode("utf-8") if "\x00" not in key else b""
    except UnicodeEncodeError as e:  # lone surrogates
        raise KvpError("KVP key is not encodable as UTF-8", key=ascii(key[:64])) from e
    if not raw:
        raise KvpError("KVP key is empty or contains NUL", key=key[:64])
    if len(raw) > MAX_KEY_BYTES:
        raise KvpError("KVP key is longer than 254 bytes", key=key[:64], size=len(raw))
    return raw


def pack(key: bytes, value: bytes) -> bytes:
    """One 2560-byte record: both fields NUL-padded to their width."""
    return key.ljust(KEY_SIZE, b"\0") + value.ljust(VALUE_SIZE, b"\0")


def encode(key: str, value: str) -> list[bytes]:
    """The pool records for one key/value: one record, or parts `<key>|<i>/<n>` when the value is long.
    Raises KvpError for a key that is empty, has NUL, is too long (with room for the part suffix when
    split) or looks like a part key itself (decode could not tell them apart), and for a value with NUL."""
    raw_key = _check_key(key)
    if _PART.match(key):
        raise KvpError("KVP key must not end like a part suffix '|i/n'", key=key[:64])
    if "\x00" in value:
        raise KvpError("KVP value contains NUL", key=key[:64])
    try:
        chunks = split_utf8(value)
    except UnicodeEncodeError as e:  # lone surrogates
        raise KvpError("KVP value is not encodable as UTF-8", key=key[:64]) from e
    n = len(chunks)
    if n == 1:
        return [pack(raw_key, chunks[0])]
    return [pack(_check_key(f"{key}|{i}/{n}"), chunk) for i, chunk in enumerate(chunks, start=1)]


def _field(raw: bytes) -> str:
    # Other writers share the pool: tolerate anything, never fail on their bytes.
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_raw(data: bytes) -> list[tuple[str, str]]:
    """Every whole record in pool bytes as (key, value); a trailing partial record is ignored."""
    records = (data[at:at + RECORD_SIZE] for at in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE))
    return [(_field(record[:KEY_SIZE]), _field(record[KEY_SIZE:])) for record in records]


def _run_of_parts(raw: Sequence[tuple[str, str]], start: int) -> KvpRecord | None:
    """A complete run `base|1/n` .. `base|n/n` beginning at `start`, joined; None when incomplete."""
    first = _PART.match(raw[start][0])
    if first is None or first.group("i") != "1":
        return None
    base, n = first.group("base"), int(first.group("n"))
    run = raw[start:start + n]
    if [key for key, _ in run] != [f"{base}|{i}/{n}" for i in range(1, n + 1)]:
        return None
    return KvpRecord(base, "".join(value for _, value in run), parts=n)


def decode_pool(data: bytes) -> list[KvpRecord]:
    """Pool bytes → records, split values rejoined (see the module docstring)."""
    raw = decode_raw(data)
    out: list[KvpRecord] = []
    i = 0
    while i < len(raw):
        joined = _run_of_parts(raw, i)
        if joined is not None:
            out.append(joined)
            i += joined.parts
        else:
            out.append(KvpRecord(*raw[i]))
            i += 1
    return out


# ---- the pool file -----------------------------------------------------------------------------------------

class KvpPool:
    """Appends records to one pool file. Never raises and never waits twice: KVP must not be why
    provisioning fails or is late. The file is reached from `root` through `statemachine.fs`, so a
    symlinked pool or pool directory, a hard-linked pool, a FIFO or a socket in its place is refused
    (once, logged, and kept in `problem` for the record's recoverable errors) instead of followed or
    waited on; after any failure the pool is left alone for the rest of the run."""

    def __init__(self, path: Path, boot: Callable[[], float | None] = boot_time,
                 lock_wait: float = LOCK_WAIT, sleep: Callable[[float], None] = time.sleep,
                 root: Path = Path("/")) -> None:
        self.path = path
        try:
            self.base, self.rel = root, str(path.relative_to(root))
        except ValueError:
            self.base, self.rel = path.parent, path.name
        self.boot = boot
        self.lock_wait = lock_wait
        self.sleep = sleep
        self._said_absent = False
        self.problem: KvpError | None = None  # why the pool was given up on, for the record
        self._stale_checked = False

    def write(self, items: Iterable[tuple[str, str]]) -> bool:
        """Append the items (each possibly split) in one locked write. True when they reached the file."""
        try:
            records = [r for key, value in items for r in encode(key, value)]
        except KvpError as e:
            log.warning("KVP record not written", extra=fields(reason=str(e)))
            return False
        if self.problem is not None:
            return False
        try:
            fd = fs.open_append(self.base, self.rel, 0o644)
            if fd is not None:
                self._append(fd, b"".join(records))
        except (OSError, AgentError) as e:  # KvpError, fs.Refused
            self.problem = KvpError("KVP pool not writable; telemetry lost for this run", path=str(self.path),
                                    error=getattr(e, "strerror", None) or str(e))
            log.warning(self.problem.reason, extra={"fields": self.problem.supporting_data})
            return False
        if fd is None:
            if not self._said_absent:  # once: on a non-Hyper-V machine this is normal, not news
                log.debug("KVP pool directory absent (no Hyper-V KVP daemon); not writing KVP",
                          extra=fields(path=str(self.path.parent)))
                self._said_absent = True
            return False
        return True

    def _append(self, fd: int, data: bytes) -> None:
        try:
            self._lock(fd)
            self._truncate_if_stale(fd)
            view = memoryview(data)
            while view:  # one write is normally enough; loop for the short-write case
                view = view[os.write(fd, view):]
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)  # also drops the lock

    def _lock(self, fd: int) -> None:
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if waited >= self.lock_wait:
                raise KvpError("KVP pool stayed locked by another writer", waited_s=round(waited, 3))
            self.sleep(0.05)
            waited += 0.05

    def _truncate_if_stale(self, fd: int) -> None:
        """Under the lock: records older than this boot belong to another life of the disk. A torn record
        at the end (a writer that died mid-write) is cut off, or every record we append would be misread."""
        booted = None if self._stale_checked else self.boot()
        self._stale_checked = True  # once per process: a clock stepped forward later must not wipe this boot
        st = os.fstat(fd)
        if booted is not None and st.st_size and st.st_mtime < booted:
            os.ftruncate(fd, 0)
            log.debug("KVP pool predates this boot; truncated", extra=fields(path=str(self.path)))
        elif st.st_size % RECORD_SIZE:
            os.ftruncate(fd, st.st_size - st.st_size % RECORD_SIZE)
            log.warning("KVP pool ended in a torn record; cut it off", extra=fields(
                path=str(self.path), bytes=st.st_size % RECORD_SIZE))

    def read(self) -> list[KvpRecord]:
        with open(self.path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            return decode_pool(f.read())


def format_pool(path: Path) -> str:
    """`azprov --status --kvp`: the pool decoded for a person, one entry per key (split values rejoined)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path}: no KVP pool (no Hyper-V KVP daemon, or nothing written yet)"
    except OSError as e:
        return f"{path}: cannot read the KVP pool: {e.strerror}"
    records = decode_pool(data)
    lines = [f"{path}: {len(data) // RECORD_SIZE} records, {len(records)} entries"
             + (f", {len(data) % RECORD_SIZE} trailing bytes ignored" if len(data) % RECORD_SIZE else "")]
    for n, rec in enumerate(records, start=1):
        parts = f" ({rec.parts} parts)" if rec.parts > 1 else ""
        lines.append(f"{n:>4}  {rec.key}{parts}")
        lines.append(f"      {rec.value}")
    return "\n".join(lines)


class Telemetry:
    """The runner's and the reporting step's one handle on KVP."""

    def __init__(self, pool: KvpPool | None, run_id: str | None = None,
                 clock: Callable[[], str] = utc_now) -> None:
        self.pool = pool
        self.run_id = run_id or os.urandom(4).hex()
        self.clock = clock
        self.vm_id: str | None = None
        self.seq = 0
        self._reported: set[str] = set()

    def _event(self, kind: str, name: str, result: str, duration_s: float | None, msg: str) -> None:
        if self.pool is None:
            return
        self.seq += 1
        key = event_key(self.vm_id, kind, name, self.run_id, self.seq)
        self.pool.write([(key, event_value(name, kind, result, duration_s, msg, self.clock()))])

    @property
    def problem(self) -> KvpError | None:
        """Why the pool was given up on in this run (a refused link, a FIFO, a full disk), if it was."""
        return self.pool.problem if self.pool is not None else None

    def entered(self, state: str, msg: str = "") -> None:
        self._event("enter", state, "-", None, msg)

    def left(self, state: str, result: str, duration_s: float, msg: str = "") -> None:
        self._event("leave", state, result, duration_s, msg)

    def report(self, text: str) -> bool:
        """Write PROVISIONING_REPORT, once per result per run (the failure path retries its POST; the
        record need not repeat). True when it is in the pool."""
        result = report_fields(text).get("result", "")
        if self.pool is None or result in self._reported:
            return False
        if self.pool.write([(REPORT_KEY, text)]):
            self._reported.add(result)
            log.debug("provisioning report written to KVP", extra=fields(result=result))
            return True
        return False
