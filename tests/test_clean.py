"""`azprov clean`: what it removes, what it keeps, and that it refuses while a run holds the lock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from statemachine.clean import clean
from statemachine.config import Config, PathsConfig
from statemachine.errors import ConfigureError, LockError
from statemachine.lock import RunLock


def setup(tmp_path: Path) -> tuple[Config, Path, Path]:
    state, root = tmp_path / "state", tmp_path / "root"
    state.mkdir(mode=0o700)
    for name in ("state.json", "state.json.prev", "state.json.corrupt-20260101T000000Z", "custom_data", "lock"):
        (state / name).write_text("x")
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    logs = root / "var/log"
    (logs / "azprov").mkdir(parents=True)
    (logs / "azprov/run.log").write_text("x")
    for name in ("azprov.log", "azprov.log.1", "syslog"):
        (logs / name).write_text("x")
    return Config(paths=PathsConfig(state_dir=str(state), root=str(root))), state, root


def test_removes_records_only_by_default(tmp_path: Path) -> None:
    cfg, state, root = setup(tmp_path)
    removed = clean(cfg)
    assert sorted(Path(p).name for p in removed) == ["custom_data", "state.json",
                                                     "state.json.corrupt-20260101T000000Z", "state.json.prev"]
    assert [p.name for p in state.iterdir()] == ["lock"]
    assert (root / "var/log/azprov.log").exists()
    assert (root / "etc/machine-id").read_text().startswith("0123")


def test_logs_and_machine_id_on_request(tmp_path: Path) -> None:
    cfg, _, root = setup(tmp_path)
    removed = clean(cfg, logs=True, machine_id=True)
    assert str(root / "var/log/azprov") in removed and str(root / "var/log/azprov.log.1") in removed
    assert sorted(p.name for p in (root / "var/log").iterdir()) == ["syslog"]
    machine_id = root / "etc/machine-id"
    assert machine_id.read_text() == "uninitialized\n"
    assert stat.S_IMODE(machine_id.stat().st_mode) == 0o444
    assert any("uninitialized" in p for p in removed)
    assert clean(cfg, logs=True, machine_id=True) == []  # nothing left: says so by listing nothing


def test_refuses_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    cfg, state, _ = setup(tmp_path)
    running = RunLock(state / "lock")  # a separate open file description, as another process would have
    assert running.try_acquire()
    try:
        with pytest.raises(LockError, match="holds the lock"):
            clean(cfg, logs=True, machine_id=True)
        assert (state / "state.json").exists()
    finally:
        running.release()
    assert clean(cfg)  # works once the run is gone


def test_missing_state_dir_is_nothing_to_do(tmp_path: Path) -> None:
    cfg = Config(paths=PathsConfig(state_dir=str(tmp_path / "none"), root=str(tmp_path)))
    assert clean(cfg) == []
    assert not (tmp_path / "none").exists()


def test_machine_id_symlink_is_not_written_through(tmp_path: Path) -> None:
    cfg, _, root = setup(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (root / "etc/machine-id").unlink()
    (root / "etc/machine-id").symlink_to(target)
    with pytest.raises(ConfigureError, match="symlink"):
        clean(cfg, machine_id=True)
    assert target.read_text() == "keep\n"


def test_machine_id_reset_also_unlinks_dbus_copy(tmp_path: Path) -> None:
    cfg, _, root = setup(tmp_path)
    dbus = root / "var/lib/dbus/machine-id"
    dbus.parent.mkdir(parents=True)
    dbus.write_text("0123456789abcdef0123456789abcdef\n")  # a regular file, as debootstrap leaves it
    removed = clean(cfg, machine_id=True)
    assert dbus.is_symlink() and os.readlink(dbus) == "/etc/machine-id"
    assert any("dbus" in r for r in removed)
    assert not [r for r in clean(cfg, machine_id=True) if "dbus" in r]  # a symlink already: nothing to do
