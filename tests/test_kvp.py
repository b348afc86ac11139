"""KVP record format (pure) and the pool writer (temp dirs only; never /var/lib/hyperv)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from statemachine import kvp
from statemachine.errors import KvpError
from statemachine.kvp import (
    KEY_SIZE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    RECORD_SIZE,
    KvpPool,
    KvpRecord,
    boot_time,
    decode_pool,
    decode_raw,
    encode,
    format_pool,
    split_utf8,
)

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
KEYS = TEXT.filter(lambda k: 0 < len(k.encode()) <= MAX_KEY_BYTES - 12 and not kvp._PART.match(k))


def test_record_layout_matches_the_pool_format() -> None:
    [record] = encode("myKey", "myValue")
    assert len(record) == RECORD_SIZE == 2560
    assert record[:5] == b"myKey" and set(record[5:KEY_SIZE]) == {0}
    assert record[KEY_SIZE:KEY_SIZE + 7] == b"myValue" and set(record[KEY_SIZE + 7:]) == {0}


def test_value_of_exactly_1022_bytes_stays_whole_and_1023_splits() -> None:
    assert len(encode("k", "a" * MAX_VALUE_BYTES)) == 1
    parts = encode("k", "a" * (MAX_VALUE_BYTES + 1))
    assert [decode_raw(p)[0][0] for p in parts] == ["k|1/2", "k|2/2"]
    assert [len(decode_raw(p)[0][1]) for p in parts] == [1022, 1]


def test_split_never_cuts_a_character_and_every_part_is_valid_utf8() -> None:
    value = "a" + "€" * 700  # 1 + 2100 bytes: a 3-byte character straddles every 1022-byte mark
    parts = encode("event", value)
    assert len(parts) == 3
    for p in parts:
        raw_value = p[KEY_SIZE:].rstrip(b"\0")
        assert len(raw_value) <= MAX_VALUE_BYTES
        raw_value.decode("utf-8")  # strict: the kernel refuses broken UTF-8
    [rec] = decode_pool(b"".join(parts))
    assert rec == KvpRecord("event", value, parts=3)


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 255, "é" * 128, "name|1/2", "lone\ud800surrogate"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(KvpError):
        encode(key, "v")


def test_key_without_room_for_the_part_suffix_is_refused_only_when_split() -> None:
    key = "k" * MAX_KEY_BYTES
    assert len(encode(key, "short")) == 1
    with pytest.raises(KvpError):
        encode(key, "v" * 2000)


@pytest.mark.parametrize("value", ["a\x00b", "lone\udfffsurrogate"])
def test_unencodable_values_are_refused(value: str) -> None:
    with pytest.raises(KvpError):
        encode("k", value)


@given(key=st.text(), value=st.text())
def test_encode_raises_only_kvp_error(key: str, value: str) -> None:
    try:
        records = encode(key, value)
    except KvpError:
        return
    assert decode_pool(b"".join(records)) == [KvpRecord(key, value, parts=len(records))]


@settings(max_examples=examples(300))
@given(key=KEYS, value=TEXT)
def test_encode_decode_round_trip(key: str, value: str) -> None:
    records = encode(key, value)
    assert all(len(r) == RECORD_SIZE for r in records)
    assert [KvpRecord(key, value, parts=len(records))] == decode_pool(b"".join(records))


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(KEYS, TEXT), max_size=6))
def test_many_items_round_trip_in_order(items: list[tuple[str, str]]) -> None:
    data = b"".join(r for k, v in items for r in encode(k, v))
    assert [(r.key, r.value) for r in decode_pool(data)] == items


@given(value=TEXT, limit=st.integers(min_value=4, max_value=50))
def test_split_utf8_chunks_fit_and_rejoin(value: str, limit: int) -> None:
    chunks = split_utf8(value, limit)
    assert all(len(c) <= limit for c in chunks)
    assert "".join(c.decode("utf-8") for c in chunks) == value


@given(st.binary(max_size=3 * RECORD_SIZE + 7))
def test_decode_tolerates_any_bytes(data: bytes) -> None:
    records = decode_pool(data)
    assert sum(r.parts for r in records) == len(data) // RECORD_SIZE


def test_incomplete_run_of_parts_is_shown_part_by_part() -> None:
    parts = encode("k", "x" * 3000)  # three parts
    records = decode_pool(parts[0] + parts[2] + b"\0" * 100)
    assert [r.key for r in records] == ["k|1/3", "k|3/3"] and all(r.parts == 1 for r in records)


def test_foreign_records_decode_with_replacement() -> None:
    foreign = b"\xff\xfekey".ljust(KEY_SIZE, b"\0") + b"val\0garbage".ljust(2048, b"\0")
    assert decode_pool(foreign) == [KvpRecord("\ufffd\ufffdkey", "val")]


# ---- the pool writer ----------------------------------------------------------------------------------------

def pool_in(tmp_path: Path, boot: float | None = 0.0) -> KvpPool:
    (tmp_path / "hyperv").mkdir(exist_ok=True)
    return KvpPool(tmp_path / "hyperv" / ".kvp_pool_1", boot=lambda: boot, lock_wait=2.0)


def test_writer_appends_records(tmp_path: Path) -> None:
    pool = pool_in(tmp_path)
    assert pool.write([("a", "1")]) and pool.write([("b", "2" * 1500), ("c", "3")])
    assert pool.path.stat().st_size == 4 * RECORD_SIZE
    assert [(r.key, r.parts) for r in pool.read()] == [("a", 1), ("b", 2), ("c", 1)]


def test_absent_directory_skips_with_one_debug_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = KvpPool(tmp_path / "no-hyperv" / ".kvp_pool_1")
    with caplog.at_level("DEBUG", logger="statemachine.kvp"):
        assert not pool.write([("a", "1")])
        assert not pool.write([("b", "2")])
    assert not (tmp_path / "no-hyperv").exists()
    lines = [r for r in caplog.records if r.name == "statemachine.kvp"]
    assert len(lines) == 1 and lines[0].levelname == "DEBUG"


def test_stale_pool_is_truncated_once_per_boot(tmp_path: Path) -> None:
    pool_path = tmp_path / "hyperv" / ".kvp_pool_1"
    pool_path.parent.mkdir()
    pool_path.write_bytes(b"".join(encode("old-boot", "x")))
    os.utime(pool_path, (1000.0, 1000.0))  # last written long before this "boot"
    pool = KvpPool(pool_path, boot=lambda: 2000.0)
    assert pool.write([("new", "1")])
    assert pool.write([("newer", "2")])  # mtime is now after boot: no second truncation
    assert [r.key for r in pool.read()] == ["new", "newer"]


def test_staleness_is_judged_once_per_process(tmp_path: Path) -> None:
    boot = [0.0]
    (tmp_path / "hyperv").mkdir()
    pool = KvpPool(tmp_path / "hyperv" / ".kvp_pool_1", boot=lambda: boot[0])
    assert pool.write([("first", "1")])
    boot[0] = time.time() + 3600  # the clock was stepped forward: btime moves with it
    assert pool.write([("second", "2")])
    assert [r.key for r in pool.read()] == ["first", "second"]


def test_fresh_pool_is_kept(tmp_path: Path) -> None:
    pool = pool_in(tmp_path, boot=time.time() - 60)
    pool.path.write_bytes(b"".join(encode("earlier-this-boot", "x")))  # e.g. cloud-init's records
    assert pool.write([("ours", "1")])
    assert [r.key for r in pool.read()] == ["earlier-this-boot", "ours"]


def test_unknown_boot_time_never_truncates(tmp_path: Path) -> None:
    pool = pool_in(tmp_path, boot=None)
    pool.path.write_bytes(b"".join(encode("kept", "x")))
    os.utime(pool.path, (1.0, 1.0))
    assert pool.write([("ours", "1")])
    assert [r.key for r in pool.read()] == ["kept", "ours"]


def test_torn_record_at_the_end_is_cut_before_appending(tmp_path: Path) -> None:
    pool = pool_in(tmp_path, boot=None)
    pool.path.write_bytes(b"".join(encode("whole", "x")) + b"torn-half-record")
    assert pool.write([("ours", "1")])
    assert pool.path.stat().st_size == 2 * RECORD_SIZE
    assert [r.key for r in pool.read()] == ["whole", "ours"]


def test_writer_waits_for_the_flock_of_another_writer(tmp_path: Path) -> None:
    pool = pool_in(tmp_path)
    pool.path.touch()
    done = threading.Event()
    with open(pool.path, "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: (pool.write([("waited", "1")]), done.set()))
        writer.start()
        time.sleep(0.3)
        assert not done.is_set() and pool.path.stat().st_size == 0  # blocked by our lock
        holder.write(b"".join(encode("holder", "first")))
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_UN)
    writer.join(5)
    assert done.is_set()
    assert [r.key for r in pool.read()] == ["holder", "waited"]


def test_writer_gives_up_on_a_lock_held_too_long(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = pool_in(tmp_path)
    pool.lock_wait = 0.2
    pool.path.touch()
    with open(pool.path, "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        assert not pool.write([("k", "v")])
        assert time.monotonic() - started < 2
    [line] = [r for r in caplog.records if r.name == "statemachine.kvp"]
    assert "stayed locked" in line.fields["error"]  # type: ignore[attr-defined]


def test_unwritable_pool_is_reported_not_raised(tmp_path: Path) -> None:
    pool = pool_in(tmp_path)
    pool.path.mkdir()  # a directory where the file should be: open() fails with EISDIR
    assert not pool.write([("k", "v")])


def test_boot_time_reads_btime(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nbtime 1763900000\nprocesses 5\n")
    assert boot_time(stat) == 1763900000.0
    stat.write_text("cpu 1\n")
    assert boot_time(stat) is None
    assert boot_time(tmp_path / "missing") is None
    assert isinstance(boot_time(), float)  # this machine's /proc/stat


def test_format_pool_shows_rejoined_entries(tmp_path: Path) -> None:
    pool = pool_in(tmp_path)
    pool.write([("PROVISIONING_REPORT", "result=success|agent=azprov/0.1.0"), ("long", "é" * 700)])
    text = format_pool(pool.path)
    assert text.splitlines()[0].endswith("3 records, 2 entries")
    assert "PROVISIONING_REPORT" in text and "long (2 parts)" in text and "é" * 700 in text
    assert "no KVP pool" in format_pool(tmp_path / "missing")


def _writer_process(path: str, name: str, count: int) -> None:
    pool = KvpPool(Path(path), boot=lambda: 0.0, lock_wait=30.0)
    for i in range(count):
        assert pool.write([(f"{name}-{i}", f"{name}:{i}:" + "ß" * 1200)])  # 2.4 KB: three parts each


def test_concurrent_writers_never_interleave_the_parts_of_a_value(tmp_path: Path) -> None:
    import multiprocessing

    pool = pool_in(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(str(pool.path), f"w{n}", 25)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = pool.read()
    assert len(records) == 100 and all(r.parts == 3 for r in records)
    assert all(r.value == f"{r.key.replace('-', ':')}:" + "ß" * 1200 for r in records)


class PoolMachine(RuleBasedStateMachine):
    """Writes, reboots and torn tails in any order: the pool always decodes to what this boot wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvp-machine-"))
        self.boot = time.time() - 60
        self.pool = self.new_process()
        self.model: list[tuple[str, str]] = []
        self.stale = False

    @rule(items=st.lists(st.tuples(KEYS, TEXT), min_size=1, max_size=3))
    def write(self, items: list[tuple[str, str]]) -> None:
        assert self.pool.write(items)
        self.model = ([] if self.stale else self.model) + items
        self.stale = False

    def new_process(self) -> KvpPool:
        return KvpPool(self.dir / ".kvp_pool_1", boot=lambda: self.boot)

    @rule()
    def reboot(self) -> None:
        if self.pool.path.exists():
            os.utime(self.pool.path, (self.boot - 30, self.boot - 30))  # last written in an earlier boot
            self.stale = True
        self.pool = self.new_process()

    @rule()
    def rerun_in_the_same_boot(self) -> None:
        self.pool = self.new_process()

    @rule(tail=st.binary(min_size=1, max_size=RECORD_SIZE - 1))
    def tear(self, tail: bytes) -> None:
        if self.pool.path.exists():
            mtime = self.pool.path.stat().st_mtime
            with open(self.pool.path, "ab") as f:
                f.write(tail)
            os.utime(self.pool.path, (mtime, mtime))  # a torn write does not make a stale pool fresh

    @invariant()
    def decodes_to_the_model(self) -> None:
        if not self.pool.path.exists():
            assert self.model == []
            return
        expected = [] if self.stale else self.model
        got = [(r.key, r.value) for r in decode_pool(self.pool.path.read_bytes())]
        if self.stale:  # not yet truncated: still shows the earlier boot until this boot writes
            return
        assert got == expected

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


PoolMachine.TestCase.settings = settings(max_examples=examples(40), stateful_step_count=12, deadline=None)
test_pool_state_machine = PoolMachine.TestCase
