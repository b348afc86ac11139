"""The hardening rules one by one: text made representable, JSON decoding that refuses what is not JSON,
link-safe file access, full-match names, which accounts may be reused, and which VM ids are identities."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import Env
from fakefabric import FakeFabric
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from statemachine import cli, fs, persistence
from statemachine.errors import StateFileError
from statemachine.machine import Phase
from statemachine.persistence import Record
from statemachine.resume import normalize, plan_start
from statemachine.text import MARK, clean, decode_json, parse_bool
from states.configure import hostname
from states.configure.user import Account, reuse_problem, uid_range, validate_name

ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF))


# ---- text.clean ----------------------------------------------------------------------------------------------

@given(ANY_TEXT, st.none() | st.integers(0, 300))
def test_clean_text_fits_everywhere(text: str, limit: int | None) -> None:
    out = clean(text, limit)
    assert limit is None or len(out) <= limit
    out.encode("utf-8")  # strict: no surrogates
    etree.Element("x").text = out  # lxml takes it: no C0 controls, no U+FFFE/U+FFFF
    json.loads(json.dumps(out, ensure_ascii=False))


def test_cut_keeps_our_words_and_the_cause_at_word_boundaries() -> None:
    detail = ("request to the fabric failed: HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded "
              "with url: /machine/?comp=goalstate (Caused by NewConnectionError('<urllib3.connection.HTTPConnection "
              "object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused'))")
    out = clean(detail, 120)
    assert len(out) <= 120 and MARK in out
    assert out.startswith("request to the fabric failed:") and out.endswith("Connection refused'))")
    head, tail = out.split(MARK)
    assert detail.startswith(head) and detail.endswith(tail)
    assert detail[len(head)] == " " and detail[-len(tail) - 1] == " "  # cut between words


@pytest.mark.parametrize("bad", ["\ud800", "\udfff", "\ufffe", "\uffff", "\ufdd0", "\U0010fffe", "\x00", "\x1b"])
def test_unrepresentable_characters_are_replaced(bad: str) -> None:
    assert clean(f"a{bad}b") == "a\ufffdb"


def test_tab_newline_and_ordinary_text_are_kept() -> None:
    assert clean("a\tb\nc\rd é 日本") == "a\tb\nc\rd é 日本"


def test_one_true_false_parser() -> None:
    assert [parse_bool(v) for v in ("true", "False", "TRUE", True, False, None, "")] == \
        [True, False, True, True, False, None, None]
    for bad in ("yes", "1", 1, "true ", [], {}):
        with pytest.raises(ValueError):
            parse_bool(bad)


# ---- decoding JSON ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, why", [
    (b"NaN", "NaN"), (b'{"a": Infinity}', "Infinity"), (b"[-Infinity]", "Infinity"), (b"1e999", "out of range"),
    (b"9" * 5000, "4300 digits"), (b"[" * 100000 + b"]" * 100000, "nested"), (b"\xff", "utf-8"),
    (b'{"a": 1', "delimiter"),
])
def test_decode_json_refuses_what_is_not_json(doc: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=f"(?i){why}"):
        decode_json(doc)


def test_decode_json_reads_json() -> None:
    assert decode_json(b'{"a": [1, 2.5, "\\ud800", null, true]}') == {"a": [1, 2.5, "\ud800", None, True]}


@pytest.mark.parametrize("doc", [b'{"schema": 1, "attempts": NaN}', b'{"schema": 1, "attempts": ' + b"9" * 5000 + b"}",
                                 b'{"schema": 1, "boot_attempts": 1e999}', b"[" * 50000])
def test_unreadable_records_are_state_file_errors(tmp_path: Path, doc: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(doc)
    os.chmod(path, 0o600)
    with pytest.raises(StateFileError, match="not valid JSON"):
        persistence.load(path)


def test_any_record_can_be_saved(tmp_path: Path) -> None:
    record = Record(vm_id="\ud800", last_error={"reason": "\udfff", "data": {"\ud800": float("inf"),
                                                                               "n": 10 ** 4000}})
    path = tmp_path / "state.json"
    persistence.save(path, record)
    loaded = persistence.load(path)
    assert loaded is not None and loaded.vm_id == "\ufffd"
    assert loaded.last_error == {"reason": "\ufffd", "data": {"\ufffd": "inf", "n": "<integer too large>"}}


# ---- the file-system module ------------------------------------------------------------------------------

def test_refusal_names_the_path_and_the_link(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root/etc").symlink_to("/etc")
    with pytest.raises(fs.Refused) as info:
        fs.atomic_write(tmp_path / "root", "etc/hostname", b"x\n")
    assert info.value.reason == "symlink in the path; refusing to follow it"
    assert info.value.supporting_data == {"path": str(tmp_path / "root/etc"), "found": "a symlink to '/etc'"}


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pool")
    with pytest.raises(fs.Refused, match="FIFO"):
        fs.read_file(tmp_path, "pool", 100)
    with pytest.raises(fs.Refused, match="FIFO"):
        fs.open_append(tmp_path, "pool")


def test_hard_link_is_refused_where_content_is_reused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("root-only\n")
    os.link(tmp_path / "secret", tmp_path / "keys")
    with pytest.raises(fs.Refused, match="hard-linked"):
        fs.read_file(tmp_path, "keys", 100, single_link=True)
    assert fs.read_file(tmp_path, "keys", 100) is not None  # reading alone is not reuse


def test_modes_hold_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fs.atomic_write(tmp_path, "a/b/file", b"x", 0o600, dir_mode=0o700)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a/b").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a/b/file").stat().st_mode) == 0o600


def test_a_whole_run_under_umask_000_keeps_the_state_private(vm: Env, fabric: FakeFabric) -> None:
    old = os.umask(0)
    try:
        assert cli.main(["--config", str(vm.config_path)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(vm.state_dir.stat().st_mode) == 0o700
    files = [p for p in vm.state_dir.iterdir() if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files


# ---- names and identity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["azureuser\n", "azureuser\nroot", "a b", "Azure", "-x", "x" * 33, ""])
def test_user_names_are_checked_whole(name: str) -> None:
    assert validate_name(name) is not None


@pytest.mark.parametrize("name", ["web-01\n", "web\n.example", "a..b", "-a", "a-"])
def test_host_names_are_checked_whole(name: str) -> None:
    assert hostname.validate(name) is not None


def test_uid_range_comes_from_login_defs() -> None:
    assert uid_range("") == (1000, 60000)
    assert uid_range("# c\nUID_MIN\t500\nUID_MAX 2000\nGID_MIN 7\n") == (500, 2000)
    assert uid_range("UID_MIN lots\nUID_MAX " + "9" * 40 + "\n") == (1000, 60000)


@pytest.mark.parametrize("uid, shell, ok", [(1000, "/bin/bash", True), (60000, "/bin/sh", True),
                                            (999, "/bin/bash", False), (65534, "/bin/bash", False),
                                            (1500, "/usr/sbin/nologin", False), (1500, "/bin/false", False)])
def test_only_regular_login_accounts_are_reused(uid: int, shell: str, ok: bool) -> None:
    problem = reuse_problem(Account("u", uid, uid, "/home/u", shell), (1000, 60000))
    assert (problem is None) == ok


@pytest.mark.parametrize("raw", ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                                 "ffffffff-ffff-ffff-ffff-ffffffffffff\n"])
def test_placeholder_uuids_are_no_identity(raw: str) -> None:
    assert normalize(raw, gen1=True) is None and normalize(raw, gen1=False) is None


def test_a_record_without_identity_is_no_proof_of_this_vm() -> None:
    done = Record(state=Phase.DONE, vm_id=None)
    action, record = plan_start(done, "11111111-2222-3333-4444-555555555555", 3, "t")
    assert action == "new_vm" and record.state is Phase.NETWORK_WAIT
    assert plan_start(done, None, 3, "t")[0] == "done"  # no SMBIOS either: the record is all we have


def test_placeholder_smbios_takes_the_vm_id_from_imds(vm: Env, fabric: FakeFabric) -> None:
    vm.uuid_path.write_text("00000000-0000-0000-0000-000000000000\n")
    assert cli.main(["--config", str(vm.config_path)]) == 0
    saved = json.loads(vm.state_file.read_text())
    assert (saved["vm_id"], saved["vm_id_source"]) == (fabric.vm_id.lower(), "imds")
    asked = len(fabric.log)
    assert cli.main(["--config", str(vm.config_path)]) == 0  # a reboot trusts the record, as without SMBIOS
    assert len(fabric.log) == asked


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a hard link to a root-only file needs root")
@pytest.mark.parametrize("plant", ["etc/passwd-", "etc/shadow+", "etc/group"])
def test_shadow_tools_never_run_over_a_planted_link(tmp_path: Path, plant: str) -> None:
    from statemachine.config import Config, PathsConfig, UserConfig
    from statemachine.context import Context
    from states.configure import Facts, user
    from states.configuring import Instance

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    outside = tmp_path / "outside-shadow"
    outside.write_text("root:$6$secret:::\n")
    if plant == "etc/group":
        (root / plant).unlink()
        (root / plant).symlink_to(outside)
    else:
        os.link(outside, root / plant)
    ctx = Context(Config(paths=PathsConfig(root=str(root)), user=UserConfig(groups=())))
    with pytest.raises(fs.Refused) as info:
        user.apply(ctx, Facts(Instance(admin_username="azureuser", disable_password_authentication=True)))
    assert info.value.supporting_data["path"] == str(root / plant)
    assert outside.read_text() == "root:$6$secret:::\n"
    assert "azureuser" not in (root / "etc/passwd").read_text()


# ---- every refusal says what was refused ---------------------------------------------------------------

def test_a_refused_write_shows_in_status_with_its_step(vm: Env, fabric: FakeFabric,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    outside = vm.tmp / "outside-etc"
    outside.mkdir()
    (vm.root / "etc").rmdir()
    (vm.root / "etc").symlink_to(outside)
    assert cli.main(["--config", str(vm.config_path)]) == 0  # the VM is usable: Ready was reported
    journal = capsys.readouterr().out
    assert "symlink in the path" in journal and str(outside) in journal
    assert list(outside.iterdir()) == []
    assert cli.main(["--config", str(vm.config_path), "--status", "--json"]) == 2
    shown = json.loads(capsys.readouterr().out)
    [refusal] = shown["recoverable_errors"]
    assert refusal["step"] == "hostname" and refusal["reason"] == "symlink in the path; refusing to follow it"
    assert refusal["data"] == {"path": str(vm.root / "etc"), "found": f"a symlink to {str(outside)!r}"}


def test_a_refused_name_reaches_the_provisioningfailed_description(vm: Env, fabric: FakeFabric) -> None:
    fabric.imds_document = {"compute": {"vmId": fabric.vm_id, "osProfile": {
        "computerName": "web-01", "adminUsername": "azureuser\n", "disablePasswordAuthentication": "true"}}}
    vm.set("configure", steps=["hostname", "user"])
    assert cli.main(["--config", str(vm.config_path)]) == 1
    [failure] = [e for e in fabric.failure_reports()]
    assert "reason=admin username is not acceptable" in failure["description"]
    assert "username=azureuser%0A" in failure["description"] and "problem=not 1-32" in failure["description"]


def test_hostile_text_reaches_a_real_journal_without_a_logging_error(vm: Env, fabric: FakeFabric) -> None:
    """Out of process: the real stdout (strict UTF-8) must take every log line the run writes."""
    fabric.imds_document = {"compute": {"vmId": fabric.vm_id, "osProfile": {
        "computerName": "web-\ufffe", "adminUsername": "\ud800\ufffe\x1b[31m",
        "disablePasswordAuthentication": "\ud800"}}}
    vm.set("configure", steps=["hostname", "user"])
    out = vm.run()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr and "Logging error" not in out.stderr, out.stderr
    assert fabric.failure_reports()
    assert json.loads(vm.state_file.read_text())["state"] == "failed"


def test_dry_run_names_an_oversized_number_instead_of_a_traceback(vm: Env, fabric: FakeFabric,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fabric.set_script("imds", [{"status": 200, "body": '{"compute": {"vmId": ' + "9" * 5000 + "}}"}] * 40)
    vm.set("fabric", imds_timeout=0.3)
    assert cli.main(["--config", str(vm.config_path), "--dry-run", "--json"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "integer has more than 4300 digits" in out.out


# ---- KVP never costs the Ready ---------------------------------------------------------------------------

def test_a_locked_pool_is_waited_for_once_per_run(tmp_path: Path) -> None:
    import fcntl
    import time

    from statemachine.kvp import KvpPool

    (tmp_path / "hyperv").mkdir()
    pool = KvpPool(tmp_path / "hyperv/.kvp_pool_1", root=tmp_path, boot=lambda: 0.0, lock_wait=0.2)
    pool.path.touch()
    with open(pool.path, "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert not pool.write([("a", "1")])
        started = time.monotonic()
        assert not pool.write([("b", "2")]) and not pool.write([("c", "3")])
        assert time.monotonic() - started < 0.1  # given up on for the rest of the run


@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_an_unwritable_pool_never_prevents_the_ready(vm: Env, fabric: FakeFabric, plant: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pool_dir = vm.root / "var/lib/hyperv"
    pool_dir.mkdir(parents=True)
    outside = vm.tmp / "outside-pool"
    outside.write_bytes(b"keep")
    if plant == "fifo":
        os.mkfifo(pool_dir / ".kvp_pool_1")
    else:
        (pool_dir / ".kvp_pool_1").symlink_to(outside)
    assert cli.main(["--config", str(vm.config_path)]) == 0
    assert fabric.ready_reports()
    assert outside.read_bytes() == b"keep"
    capsys.readouterr()
    assert cli.main(["--config", str(vm.config_path), "--status", "--json"]) == 2  # done, with what was refused
    [refusal] = json.loads(capsys.readouterr().out)["recoverable_errors"]
    assert refusal["step"] == "kvp" and refusal["reason"] == "KVP pool not writable; telemetry lost for this run"
    assert ("FIFO" if plant == "fifo" else "symlink in the path") in refusal["data"]["error"]


def test_status_never_reads_through_a_planted_state_dir(vm: Env, capsys: pytest.CaptureFixture[str]) -> None:
    outside = vm.tmp / "outside-state"
    outside.mkdir()
    (outside / "state.json").write_text('{"schema": 1, "state": "done"}')
    if vm.state_dir.exists():
        vm.state_dir.rmdir()
    vm.state_dir.symlink_to(outside)
    assert cli.main(["--config", str(vm.config_path), "--status", "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "unknown"
    assert shown["last_error"]["reason"] == "state directory is not a directory"
    assert shown["last_error"]["data"]["found"] == f"a symlink to {str(outside)!r}"
    assert "every boot provisions again" in shown["detail"]
