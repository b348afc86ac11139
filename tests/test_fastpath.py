"""The later-boot fast path: says "done" only when nothing a DONE answer rests on has changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Env
from fakefabric import FakeFabric

from statemachine import config, fastpath, persistence

LAUNCH = "import sys\nfrom statemachine.launch import run\nrc = run()\n" \
         "heavy = [m for m in ('dataclasses', 'logging', 'argparse', 'requests', 'lxml') if m in sys.modules]\n" \
         "print('RC', rc, 'HEAVY', heavy)\n"


def launch(vm: Env, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script's code path (statemachine.launch.run: all of main but its exit), in a subprocess."""
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], env={**vm.env(), **(env or {})},
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def provisioned(vm: Env) -> Env:
    out = launch(vm, "--config", str(vm.config_path))
    assert "RC 0" in out.stdout and "provisioning finished" in out.stdout, out.stdout + out.stderr
    assert (vm.state_dir / fastpath.STAMP_FILE).exists()
    return vm


def test_constants_match_the_modules_they_mirror() -> None:
    assert fastpath.STATE_FILE == persistence.STATE_FILE
    assert fastpath.DEFAULT_STATE_DIR == config.PathsConfig().state_dir
    assert fastpath.MAX_LAYER == config.MAX_FILE


@pytest.mark.parametrize("argv, expected", [
    ([], (True, None)), (["--config", "x.toml"], (True, "x.toml")), (["--config=x.toml"], (True, "x.toml")),
    (["--status"], (False, None)), (["--config", "x", "--status"], (False, None)), (["--conf", "x"], (False, None)),
])
def test_only_plain_runs_take_the_fast_path(argv: list[str], expected: tuple[bool, str | None]) -> None:
    assert fastpath.config_argument(argv) == expected


def test_a_later_boot_exits_before_importing_anything_heavy(vm: Env, fabric: FakeFabric) -> None:
    provisioned(vm)
    requests_before = len(fabric.log)
    out = launch(vm, "--config", str(vm.config_path))
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr
    assert f"azprov: already provisioned on this VM; nothing to do vm_id='{vm.vm_id}'" in out.stdout
    assert len(fabric.log) == requests_before


def test_journal_prefix_and_log_level_like_the_full_path(vm: Env, fabric: FakeFabric) -> None:
    provisioned(vm)
    out = launch(vm, "--config", str(vm.config_path), env={"JOURNAL_STREAM": "8:1"})
    assert "<6>azprov: already provisioned" in out.stdout
    quiet = launch(vm, "--config", str(vm.config_path), env={"SYSTEMD_LOG_LEVEL": "warning"})
    assert "RC 0 HEAVY []" in quiet.stdout and "already provisioned" not in quiet.stdout


def changed_config(vm: Env) -> None:
    vm.set("log", level="debug").write()


def changed_uuid(vm: Env) -> None:
    vm.new_vm()


def touched_record(vm: Env) -> None:
    record = persistence.load(vm.state_file)
    assert record is not None
    persistence.save(vm.state_file, record)


def broken_stamp(vm: Env) -> None:
    (vm.state_dir / fastpath.STAMP_FILE).write_text("{not json")


def added_drop_in(vm: Env) -> None:
    drop_in = vm.tmp / "system-config" / "azprov.toml.d"
    drop_in.mkdir(parents=True)
    (drop_in / "10-local.toml").write_text("[log]\nlevel = \"info\"\n")


@pytest.mark.parametrize("change", [changed_config, changed_uuid, touched_record, broken_stamp, added_drop_in])
def test_any_change_sends_the_run_down_the_full_path(vm: Env, fabric: FakeFabric, change: object) -> None:
    provisioned(vm)
    change(vm)  # type: ignore[operator]
    out = launch(vm, "--config", str(vm.config_path))
    assert "RC 0 HEAVY []" not in out.stdout, out.stdout
    assert "RC 0" in out.stdout, out.stdout + out.stderr
    # The full path re-stamped it: the next boot is fast again.
    again = launch(vm, "--config", str(vm.config_path))
    assert "RC 0 HEAVY []" in again.stdout, again.stdout + again.stderr


def test_an_invalid_config_is_never_waved_through(vm: Env, fabric: FakeFabric) -> None:
    provisioned(vm)
    vm.config_path.write_text(vm.config_path.read_text() + "\n[log]\nlevl = \"info\"\n")
    out = launch(vm, "--config", str(vm.config_path))
    assert "RC 78" in out.stdout, out.stdout + out.stderr


def test_a_stamp_that_cannot_be_written_is_ignored(tmp_path: Path) -> None:
    fastpath.remember([[str(tmp_path / "a.toml"), ""]], str(tmp_path / "absent"), "/nonexistent", "/nonexistent",
                      "id", "info")  # cannot be written: ignored
    assert not (tmp_path / "absent" / fastpath.STAMP_FILE).exists()
    assert not fastpath.already_done(["--config", str(tmp_path / "missing.toml")])


@pytest.mark.parametrize("text", [
    "", "[paths]\nstate_dir = \"/x\"\n", "[paths] # the paths\nstate_dir = \"/x\" # here\nroot = \"/\"\n",
    "[fabric]\nstate_dir = \"/nope\"\n", "paths.state_dir = \"/x\"\n", "[paths]\nstate_dir = '/x'\n",
    "paths = { state_dir = \"/x\" }\n", "[paths]\nstate_dir = \"/a\\\\b\"\n", "# state_dir = \"/x\"\n",
    "[log]\nlevel = \"info\"\n", "[paths]\nstate_dir=\"/y\"\n[paths.sub]\nstate_dir = \"/z\"\n",
])
def test_the_line_scan_agrees_with_tomllib_or_defers(text: str) -> None:
    tomllib = config.tomllib  # tomli before 3.11
    understood, value = fastpath.simple_state_dir(text)
    try:
        expected = tomllib.loads(text).get("paths", {}).get("state_dir")
    except tomllib.TOMLDecodeError:
        expected = "invalid"
    if understood:
        assert value == expected
    assert fastpath.state_dir_of([["f", text]]) in (expected if isinstance(expected, str) else "",
                                                    fastpath.DEFAULT_STATE_DIR)


def opened_state_dir(vm: Env) -> None:
    vm.state_dir.chmod(0o755)  # the full path tightens it back to 0700 (and re-stamps)


def test_a_state_dir_open_to_others_is_not_trusted(vm: Env, fabric: FakeFabric) -> None:
    provisioned(vm)
    opened_state_dir(vm)
    out = launch(vm, "--config", str(vm.config_path))
    assert "RC 0 HEAVY []" not in out.stdout and "RC 0" in out.stdout, out.stdout + out.stderr
    assert vm.state_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("spelling", ["double-slash", "dot-slash", "equals"])
def test_the_config_path_as_the_unit_spells_it_takes_the_fast_path(vm: Env, fabric: FakeFabric,
                                                                   spelling: str) -> None:
    """The stamp names --config exactly as given: Path() would turn `dir//x` or `./x` into another string
    and the fast path, which compares the argument as given, would never match."""
    parent, name = vm.config_path.parent, vm.config_path.name
    argv = {"double-slash": ["--config", f"{parent}//{name}"],
            "dot-slash": ["--config", f"./{name}"],
            "equals": [f"--config={parent}/./{name}"]}[spelling]
    env = {**vm.env()}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", LAUNCH, *argv], env=env, capture_output=True, text=True,
                              cwd=parent, timeout=60)

    first = run()
    assert "RC 0" in first.stdout and "provisioning finished" in first.stdout, first.stdout + first.stderr
    again = run()
    assert "RC 0 HEAVY []" in again.stdout, again.stdout + again.stderr
