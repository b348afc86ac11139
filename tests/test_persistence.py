from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import persistence
from statemachine.errors import StateFileError
from statemachine.machine import Phase
from statemachine.persistence import Record

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
opt_text = st.none() | text
json_scalar = st.none() | st.booleans() | st.integers(-10**6, 10**6) | text

free_key = text.filter(lambda k: k not in persistence.ENTRY_TYPES)
entry = st.dictionaries(free_key, json_scalar, max_size=3).flatmap(
    lambda extra: st.fixed_dictionaries({}, optional={"state": text, "at": text, "event": text,
                                                      "duration_s": st.floats(0, 1e6), "reason": text,
                                                      "step": text, "status": text, "result": text}
                                        ).map(lambda known: {**extra, **known}))
records = st.builds(
    Record,
    state=st.sampled_from(list(Phase)),
    vm_id=opt_text, vm_id_source=opt_text, incarnation=opt_text, container_id=opt_text, instance_id=opt_text,
    boot_attempts=st.integers(0, 100), runs=st.integers(0, 100), attempts=st.integers(0, 10**6),
    reported_ready_at=opt_text, failure_reported_at=opt_text,
    history=st.lists(entry, max_size=5).map(tuple),
    last_error=st.none() | entry,
    recoverable_errors=st.lists(entry, max_size=3).map(tuple),
    steps=st.dictionaries(text, entry, max_size=3),
)


@settings(max_examples=examples(60), deadline=None)
@given(record=records)
def test_save_then_load_round_trips_and_leaves_no_temp_files(tmp_path_factory: pytest.TempPathFactory,
                                                             record: Record) -> None:
    directory = tmp_path_factory.mktemp("state")
    path = directory / "state.json"
    persistence.save(path, record)
    assert persistence.load(path) == record
    assert sorted(p.name for p in directory.iterdir()) == ["state.json"]


def test_missing_record_is_none(tmp_path: Path) -> None:
    assert persistence.load(tmp_path / "state.json") is None


@pytest.mark.parametrize("content, reason", [
    (b"", "not valid JSON"),
    (b'{"schema": 1, "state": "don', "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"schema": 99, "state": "done"}', "unknown schema"),
    (b'{"state": "done"}', "unknown schema"),
    (b'{"schema": 1, "state": "sleeping"}', "unknown state"),
    (b'{"schema": 1, "state": 3}', "wrong type"),
    (b'{"schema": 1, "attempts": "3"}', "wrong type"),
    (b'{"schema": 1, "attempts": true}', "wrong type"),
    (b'{"schema": 1, "history": {"a": 1}}', "wrong type"),
    (b'{"schema": 1, "history": [1]}', "wrong type"),
    (b'{"schema": 1, "attempts": -1}', "negative"),
])
def test_broken_records_raise_state_file_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(StateFileError, match=reason):
        persistence.load(path)


def test_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    persistence.save(target, Record(state=Phase.DONE))
    link = tmp_path / "state.json"
    link.symlink_to(target)
    with pytest.raises(StateFileError, match="symlink"):
        persistence.load(link)
    moved = persistence.quarantine(link)
    assert moved is not None and moved.is_symlink() and target.exists()


def test_world_writable_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    persistence.save(path, Record())
    path.chmod(0o666)
    with pytest.raises(StateFileError, match="writable by others"):
        persistence.load(path)


def test_quarantine_keeps_the_evidence(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{broken")
    moved = persistence.quarantine(path)
    assert moved is not None and moved.name.startswith("state.json.corrupt-")
    assert moved.read_text() == "{broken" and not path.exists()


def test_state_dir_is_created_private_and_tightened(tmp_path: Path) -> None:
    d = tmp_path / "a" / "azprov"
    persistence.ensure_state_dir(d)
    assert (os.stat(d).st_mode & 0o777) == 0o700
    d.chmod(0o755)
    persistence.ensure_state_dir(d)
    assert (os.stat(d).st_mode & 0o777) == 0o700


def test_saved_file_is_json_with_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    persistence.save(path, Record(state=Phase.REPORTING, incarnation="7"))
    data = json.loads(path.read_text())
    assert data["schema"] == persistence.SCHEMA and data["state"] == "reporting" and data["incarnation"] == "7"
