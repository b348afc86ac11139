"""`azprov --status` / `azprov status`: the JSON contract, the exit codes, and every situation an operator
meets (opted out, running, interrupted, failed, unreadable, broken config), mostly in-process."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Env, examples
from fakefabric import FakeFabric
from hypothesis import given, settings
from hypothesis import strategies as st
from scenarios import wait_for

from statemachine import arguments, cli, persistence, resume, status
from statemachine.lock import RunLock
from statemachine.machine import Phase
from statemachine.persistence import Record

DOC = REPO / "docs" / "operations-status.md"

# The keys `--status --json` has always carried: a key may be added, never removed or renamed. When you add
# one, add a row to the key table in docs/operations-status.md (the test below holds the two together).
PINNED_KEYS = {
    "schema", "state", "vm_id", "vm_id_source", "incarnation", "container_id", "instance_id", "boot_attempts",
    "attempts", "reported_ready_at", "failure_reported_at", "created_at", "updated_at", "history", "last_error",
    "recoverable_errors", "steps", "running", "pid", "interrupted", "disabled_reason", "config_error", "detail",
}
# The exit codes of `--status`, as scripts rely on them.
PINNED_CODES = {"ok": 0, "failed": 1, "recoverable": 2, "interrupted": 3, "usage": 64, "noperm": 77,
                "timeout": 124}


def documented_keys() -> set[str]:
    text = DOC.read_text()
    table = text[text.index("## `--status --json` keys"):]
    table = table[:table.index("\n## ", 1)] if "\n## " in table[1:] else table
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


def at(offset: float = 0.0) -> str:
    """A record timestamp `offset` seconds from now."""
    t = time.time() + offset
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def record(state: Phase, **changes: Any) -> Record:
    history = ({"state": "network_wait", "at": at(-3), "event": "start", "duration_s": 1.0},
               {"state": "goalstate", "at": at(-2), "event": "network_up", "duration_s": 1.5},
               {"state": state.value, "at": at(-0.5), "event": "next"})
    base = Record(state=state, vm_id="0f0e0d0c-0000-4000-8000-000000000001", vm_id_source="smbios",
                  history=history, created_at=at(-3), updated_at=at(-0.2))
    return base._replace(**changes)


class Box:
    """A state directory and root under tmp_path, with a config layer naming them."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.state_dir = tmp / "state"
        (self.root / "etc" / "azprov").mkdir(parents=True)
        self.config = tmp / "azprov.toml"
        self.config.write_text(f'[paths]\nstate_dir = "{self.state_dir}"\nroot = "{self.root}"\n')

    @property
    def state_file(self) -> Path:
        return self.state_dir / persistence.STATE_FILE

    def save(self, rec: Record) -> None:
        persistence.ensure_state_dir(self.state_dir)
        persistence.save(self.state_file, rec)

    def main(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        code = cli.main(["--config", str(self.config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    def json(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
        code, out, _ = self.main(capsys, "status", "--json", *args)
        return code, json.loads(out)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


# ---- the contract ------------------------------------------------------------------------------------------

def test_documented_keys_are_the_output_keys_and_pinned_ones_stay() -> None:
    assert PINNED_KEYS <= set(status.KEYS), "a documented --status --json key disappeared"
    assert set(status.KEYS) <= documented_keys(), "document every key in docs/operations-status.md"
    assert documented_keys() - set(status.KEYS) <= {"kvp"}  # kvp: only with --kvp


def test_exit_codes_are_pinned_and_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert (status.EXIT_OK, status.EXIT_FAILED, status.EXIT_RECOVERABLE, status.EXIT_INTERRUPTED,
            status.EXIT_NOPERM, status.EXIT_TIMEOUT) == (0, 1, 2, 3, 77, 124)
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    assert "exit codes:" in help_text
    for code in PINNED_CODES.values():
        assert re.search(rf"\b{code}\b", help_text.split("exit codes:")[1]), code
    assert "124 --wait --timeout expired" in help_text and "77 permission denied" in help_text
    doc = DOC.read_text()
    for code in PINNED_CODES.values():
        assert f"| {code} |" in doc, f"exit code {code} missing from the documented table"


def test_every_situation_carries_every_key_and_a_documented_state(box: Box,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    _, data = box.json(capsys)  # not started
    seen.append(data)
    box.save(record(Phase.DONE))
    seen.append(box.json(capsys)[1])
    box.state_file.write_text("{broken")
    code, data = box.json(capsys)
    assert code == 1 and data["state"] == "unknown" and "not valid JSON" in data["last_error"]["reason"]
    seen.append(data)
    box.state_file.unlink()
    (box.root / resume.MARKER).touch()
    seen.append(box.json(capsys)[1])
    for data in seen:
        assert set(data) == set(status.KEYS)
        assert data["state"] in status.STATES
    assert "unknown" in status.STATES and "`unknown`" in DOC.read_text()


@settings(max_examples=examples(200), deadline=None)
@given(state=st.sampled_from([None, *Phase]), pid=st.one_of(st.none(), st.integers(1, 1 << 22)),
       disabled=st.one_of(st.none(), st.just("marker file /etc/azprov/disabled exists")),
       recoverable=st.booleans(), booted=st.one_of(st.none(), st.floats(0, 4e9)),
       durations=st.lists(st.one_of(st.none(), st.floats(0, 1e6)), max_size=4))
def test_document_always_has_every_key_a_documented_state_and_a_documented_code(
        state: Phase | None, pid: int | None, disabled: str | None, recoverable: bool, booted: float | None,
        durations: list[float | None]) -> None:
    rec = None
    if state is not None:
        history = tuple({"state": state.value, "at": at(-len(durations) + i), "event": "e",
                         **({"duration_s": d} if d is not None else {})} for i, d in enumerate(durations))
        rec = Record(state=state, history=history, updated_at=at(),
                     recoverable_errors=({"step": "hostname", "reason": "r"},) if recoverable else ())
    data = status.document(rec, pid, disabled, booted=booted)
    assert set(data) == set(status.KEYS) and data["state"] in status.STATES
    code = status.code_of(data)
    assert code in PINNED_CODES.values()
    assert (code == status.EXIT_INTERRUPTED) == (data["interrupted"] and data["state"] != "disabled")
    assert data["running"] == (pid is not None and (rec is None or state not in (Phase.DONE, Phase.FAILED)))
    assert code == 0 or data["state"] != "disabled"  # disabled is never an error
    if data["history"]:
        assert "duration_s" in data["history"][-1]
    json.dumps(data)
    assert status.render_document(data, long=True).startswith("state:")


def test_not_started_has_nulls_and_empty_lists(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = box.json(capsys)
    assert code == 0 and data["state"] == "not_started"
    assert data["schema"] == persistence.SCHEMA and data["vm_id"] is None and data["vm_id_source"] is None
    assert data["history"] == [] and data["boot_attempts"] == 0 and data["pid"] is None
    assert data["running"] is False and data["interrupted"] is False and data["config_error"] is None


# ---- opted out -----------------------------------------------------------------------------------------------

def test_marker_file_under_root_means_disabled(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    (box.root / resume.MARKER).touch()
    code, data = box.json(capsys)
    assert code == 0 and data["state"] == "disabled"
    assert str(box.root / resume.MARKER) in data["disabled_reason"]
    code, out, _ = box.main(capsys, "--status")
    assert code == 0 and out.startswith("state:            disabled") and "marker file" in out
    code, _, _ = box.main(capsys, "status", "--wait", "--timeout", "5")  # returns at once, no timeout
    assert code == 0


def test_kernel_command_line_means_disabled(box: Box, tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 azprov=disabled quiet\n")
    data, code = status.snapshot(box.state_file, box.root, cmdline=cmdline)
    assert code == 0 and data["state"] == "disabled" and "kernel command line" in data["disabled_reason"]
    assert resume.kernel_disabled("a azprov=disabled") and not resume.kernel_disabled("azprov=disabledx")
    assert not resume.kernel_disabled("xazprov=disabled")
    # A finished record keeps its state; the opt-out is still said.
    box.save(record(Phase.FAILED, last_error={"reason": "boom", "data": {}}))
    data, code = status.snapshot(box.state_file, box.root, cmdline=cmdline)
    assert code == 1 and data["state"] == "failed" and data["disabled_reason"]


# ---- running, interrupted, waiting ---------------------------------------------------------------------------

def test_a_run_holding_the_lock_is_running_with_its_pid(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.save(record(Phase.CONFIGURING))
    lock = RunLock(box.state_dir / persistence.LOCK_FILE)
    assert lock.try_acquire()
    try:
        code, data = box.json(capsys)
        assert code == 0 and data["state"] == "configuring" and data["running"] is True
        assert data["pid"] == os.getpid() and data["interrupted"] is False
        assert 0.3 < data["history"][-1]["duration_s"] < 60  # time so far in the current state
        # --wait keeps waiting while the run goes on, says so on stderr, and gives up with 124.
        code, _, err = box.main(capsys, "status", "--wait", "--timeout", "0.5")
        assert code == 124 and "waiting: configuring (running, pid" in err and "gave up waiting" in err
    finally:
        lock.release()


def test_lock_held_by_someone_else_no_longer_counts_once_released(box: Box) -> None:
    lock = RunLock(box.state_dir / persistence.LOCK_FILE)
    persistence.ensure_state_dir(box.state_dir)
    assert lock.try_acquire()
    assert status.lock_holder(box.state_dir) == os.getpid()
    lock.release()
    assert status.lock_holder(box.state_dir) is None  # the pid still written in the file does not count


def test_interrupted_run_is_not_success_and_wait_returns(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.save(record(Phase.CONFIGURING, last_error={
        "reason": "terminated by a signal before provisioning finished", "data": {"signal": 15},
        "state": "configuring", "at": at()}))
    code, data = box.json(capsys)
    assert code == status.EXIT_INTERRUPTED and data["interrupted"] is True and data["running"] is False
    assert data["state"] == "configuring" and "interrupted" in data["detail"]
    assert data["history"][-1]["duration_s"] is not None
    started = time.monotonic()
    code, out, _ = box.main(capsys, "status", "--wait")  # no timeout: must not hang
    assert code == 3 and time.monotonic() - started < 5 and "(interrupted)" in out


def test_interrupted_on_an_earlier_boot_waits_for_this_boots_run(box: Box) -> None:
    box.save(record(Phase.REPORTING, updated_at=at(-1)))
    data, _ = status.snapshot(box.state_file, box.root)
    assert status.settled(data, booted=time.time() - 100)  # stopped during this boot: nothing will resume it
    assert not status.settled(data, booted=time.time())  # saved before this boot: the unit resumes it
    err = io.StringIO()
    ticks = iter(x * 0.1 for x in range(100))
    data, code = status.wait(box.state_file, box.root, timeout=0.5, progress=err, sleep=lambda s: None,
                             clock=ticks.__next__, booted=time.time)
    assert code == 124 and "waiting: reporting (interrupted)" in err.getvalue()
    assert "earlier boot" in data["detail"]
    data, code = status.wait(box.state_file, box.root, timeout=0.5, progress=err, sleep=lambda s: None,
                             booted=lambda: time.time() - 100)
    assert code == 3


def test_wait_progress_and_timeout_on_a_vm_that_never_started(box: Box) -> None:
    err = io.StringIO()
    ticks = iter(x * 0.1 for x in range(100))
    data, code = status.wait(box.state_file, box.root, timeout=1.0, progress=err, sleep=lambda s: None,
                             clock=ticks.__next__)
    assert code == 124 and data["state"] == "not_started"
    assert err.getvalue().startswith("azprov: waiting: not_started") and "gave up waiting after 1s" in err.getvalue()


def test_wait_returns_when_the_run_finishes(box: Box) -> None:
    box.save(record(Phase.GOALSTATE))
    lock = RunLock(box.state_dir / persistence.LOCK_FILE)
    assert lock.try_acquire()
    calls = []

    def finish(_: float) -> None:  # the "run" ends after a few polls
        calls.append(1)
        if len(calls) == 3:
            box.save(record(Phase.DONE))
            lock.release()

    err = io.StringIO()
    data, code = status.wait(box.state_file, box.root, timeout=None, progress=err, sleep=finish)
    assert code == 0 and data["state"] == "done" and data["history"][-1]["duration_s"] == 0.0
    assert "waiting: goalstate (running" in err.getvalue()


# ---- failed, --long, permission -------------------------------------------------------------------------------

FAILED = {"reason": "IMDS gave no usable instance metadata within fabric.imds_timeout",
          "data": {"attempts": 6, "budget_key": "fabric.imds_timeout",
                   "last_reason": "connection refused " + "x" * 300 + " the end"},
          "state": "configuring", "at": "2026-11-23T14:42:25.988Z"}


def test_long_gives_the_full_error_and_time_per_state(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.save(record(Phase.FAILED, last_error=FAILED, failure_reported_at=at()))
    code, out, _ = box.main(capsys, "status", "--long")
    assert code == 1
    assert "\nlast error:\n  reason: IMDS gave" in out
    assert "  last_reason: connection refused " + "x" * 300 + " the end" in out
    assert "time per state:" in out and re.search(r"network_wait\s+1\.000s", out)
    assert re.search(r"total\s+2\.500s", out)
    short = box.main(capsys, "status")[1]
    assert "time per state" not in short and "last error:" in short


def test_permission_problem_exits_77_with_a_hint(box: Box, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    box.save(record(Phase.DONE))
    real_open = os.open

    def refuse(path: Any, *args: Any, **kwargs: Any) -> int:  # by name: the file may be opened via its dir fd
        if os.fsdecode(path).endswith(persistence.STATE_FILE):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(persistence.os, "open", refuse)
    code, out, err = box.main(capsys, "--status")
    assert code == 77 and "run as root" in err and "run as root" in out
    code, data = box.json(capsys)
    assert code == 77 and data["state"] == "unknown" and "Permission denied" in json.dumps(data["last_error"])


# ---- spellings, usage -----------------------------------------------------------------------------------------

def test_status_subcommand_and_format_json_equal_the_old_spellings(box: Box,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    box.save(record(Phase.DONE, recoverable_errors=({"step": "hostname", "reason": "r", "data": {}},)))
    outputs = {args: box.main(capsys, *args)[:2] for args in [
        ("--status", "--json"), ("status", "--json"), ("status", "--format", "json"), ("--status", "--format",
                                                                                       "json")]}
    assert len(set(outputs.values())) == 1 and next(iter(outputs.values()))[0] == 2
    assert box.main(capsys, "status")[:2] == box.main(capsys, "--status")[:2]
    assert box.main(capsys, "status", "--format", "text")[:2] == box.main(capsys, "--status")[:2]


@pytest.mark.parametrize("args", [["--long"], ["--format", "json"], ["status", "--timeout", "3"],
                                  ["status", "--wait", "--timeout", "-1"], ["status", "--wait", "--timeout", "x"],
                                  ["status", "clean"], ["--format", "yaml", "--status"]])
def test_usage_errors(box: Box, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as done:
        box.main(capsys, *args)
    assert done.value.code == 64


@pytest.mark.parametrize("command, wanted, unwanted", [
    ("clean", "--machine-id", "--dry-run"), ("status", "--timeout", "--machine-id"), ("kvp", "--json", "--wait")])
def test_command_help_is_the_commands_own(capsys: pytest.CaptureFixture[str], command: str, wanted: str,
                                          unwanted: str) -> None:
    with pytest.raises(SystemExit) as done:
        arguments.parse([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    options = out.split("exit codes:")[0]
    assert out.startswith(f"usage: azprov {command}") and wanted in options and unwanted not in options


# ---- broken config -------------------------------------------------------------------------------------------

def test_broken_config_layer_is_shown_and_the_record_still_found(box: Box,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    box.save(record(Phase.FAILED, last_error=FAILED))
    box.config.write_text(box.config.read_text() + '[fabric]\nwireserver_ur = "http://127.0.0.1:1"\n')
    code, out, err = box.main(capsys, "--status", "--json")
    data = json.loads(out)
    assert code == 1 and data["state"] == "failed"  # as the record says, not 78
    assert data["config_error"]["data"]["key"] == "fabric.wireserver_ur"
    assert data["config_error"]["data"]["file"] == str(box.config) and "fabric.wireserver_ur" in err
    code, out, _ = box.main(capsys, "status")
    assert code == 1 and "config error:" in out and "wireserver_ur" in out


def test_toml_syntax_error_layer_contributes_nothing(tmp_path: Path) -> None:
    from statemachine import config

    system = tmp_path / "etc"
    (system / "azprov.toml.d").mkdir(parents=True)
    (system / "azprov.toml").write_text('[paths]\nstate_dir = "/srv/a"\n[log]\nlevel = "loud"\n')
    (system / "azprov.toml.d" / "50-x.toml").write_text('[paths]\nroot = "/mnt"\nstate_dir = ')
    explicit = tmp_path / "extra.toml"
    explicit.write_text('[fabric]\nrequest_timeout = "3"\nimds_url = "http://127.0.0.1:7"\n')
    cfg, problems = config.load_valid(explicit, system)
    assert cfg.paths.state_dir == "/srv/a" and cfg.paths.root == "/" and cfg.log.level == "info"
    assert cfg.fabric.imds_url == "http://127.0.0.1:7" and cfg.fabric.request_timeout == 30.0
    assert [p.reason for p in problems] == ["configuration value is invalid", "configuration file is not valid TOML",
                                            "configuration value has the wrong type"]


# ---- one real run, stopped by SIGTERM ------------------------------------------------------------------------

def test_sigterm_then_status_says_interrupted_and_wait_returns(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("imds", [{"action": "hang", "delay": 60}])
    vm.set("fabric", request_timeout=30.0)
    proc = vm.popen()
    wait_for(lambda: fabric.requests("imds"))
    running = vm.call("status", "--json")
    data = json.loads(running.stdout)
    assert running.returncode == 0 and data["running"] and data["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    out = vm.run("status", "--wait", "--timeout", "20")
    assert out.returncode == 3 and "interrupted" in out.stdout, out.stdout + out.stderr


# ---- clean's messages ------------------------------------------------------------------------------------------

def test_clean_machine_id_says_created_when_it_created_the_file(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    machine_id = box.root / "etc" / "machine-id"
    code, out, _ = box.main(capsys, "clean", "--machine-id")
    assert code == 0 and f"created {machine_id} ('uninitialized')" in out and "removed" not in out
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    machine_id.chmod(0o644)
    code, out, _ = box.main(capsys, "clean", "--machine-id")
    assert code == 0 and f"removed {machine_id} (now 'uninitialized')" in out
