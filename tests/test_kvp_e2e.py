"""End to end: what a failed or finished provisioning leaves for the operator outside the VM.

The agent runs in-process (`Env.call`; as a subprocess where the process matters: a signal, a failpoint, the
`kvp` subcommand once) against the loopback fake fabric with its root in tmp_path; the KVP pool is
`<root>/var/lib/hyperv/.kvp_pool_1`. The fake fabric snapshots the pool when a health POST arrives (before it
answers, so before the agent can write anything else): that proves the KVP records came before the POST.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from conftest import Env
from fakefabric import FakeFabric

from statemachine.health import report_fields
from statemachine.kvp import RECORD_SIZE, KvpRecord, decode_pool, decode_raw

HEALTH_ROUTES = ("health", "provisioning_health")


def pool_of(vm: Env) -> Path:
    return vm.root / "var" / "lib" / "hyperv" / ".kvp_pool_1"


def with_pool(vm: Env) -> Path:
    pool = pool_of(vm)
    pool.parent.mkdir(parents=True, exist_ok=True)
    return pool


def snapshot_pool_on_health_posts(fabric: FakeFabric, pool: Path) -> None:
    original = fabric.record

    def record(entry: dict[str, Any]) -> None:
        if entry["route"] in HEALTH_ROUTES:
            entry["pool_keys"] = [r.key for r in decode_pool(pool.read_bytes())] if pool.exists() else []
        original(entry)

    fabric.record = record  # type: ignore[method-assign]


def records(pool: Path) -> list[KvpRecord]:
    data = pool.read_bytes()
    assert len(data) % RECORD_SIZE == 0
    return decode_pool(data)


def reports(pool: Path) -> list[str]:
    return [r.value for r in records(pool) if r.key == "PROVISIONING_REPORT"]


def events(pool: Path) -> list[tuple[str, str]]:
    """(kind, state) of azprov's event records, in pool order."""
    out = []
    for r in records(pool):
        if r.key.startswith("azprov|"):
            _, _, kind, state, _ = r.key.split("|")
            out.append((kind, state))
    return out


def test_ready_writes_an_event_per_state_and_the_report_before_the_post(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    snapshot_pool_on_health_posts(fabric, pool)
    out = vm.call()
    assert out.returncode == 0, out.stdout
    assert events(pool) == [("enter", "network_wait"), ("leave", "network_wait"), ("enter", "goalstate"),
                            ("leave", "goalstate"), ("enter", "reporting"), ("leave", "reporting"),
                            ("enter", "configuring"), ("leave", "configuring"), ("enter", "done")]
    [report] = reports(pool)
    fields = report_fields(report)
    assert fields["result"] == "success" and fields["vm_id"] == vm.vm_id
    assert fields["agent"] == "azprov/0.1.0" and fields["timestamp"].endswith("Z")
    [ready] = fabric.ready_reports()
    assert ready["pool_keys"][-1] == "PROVISIONING_REPORT"  # the last thing written before the POST
    for r in records(pool):
        assert len(r.key.encode()) <= 254 and len(r.value.encode()) <= 1022
        if r.key.startswith("azprov|") and "|leave|" in r.key:
            leave = report_fields(r.value)
            assert leave["result"] == "success" and float(leave["duration_s"]) >= 0


def test_imds_never_answers_fails_naming_imds_and_the_budget(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    snapshot_pool_on_health_posts(fabric, pool)
    vm.set("fabric", imds_timeout=0.8, request_timeout=0.4)
    fabric.set_script("imds", [{"action": "hang", "delay": 3}] * 50)
    out = vm.call()
    assert out.returncode == 1
    [failure] = fabric.failure_reports()
    description = failure["description"]
    fields = report_fields(description)
    assert fields["reason"] == "IMDS gave no usable instance metadata within fabric.imds_timeout"
    assert fields["budget_key"] == "fabric.imds_timeout" and fields["budget_s"] == "0.8"
    assert fields["last_endpoint"] == "imds"
    assert len(description) <= 512
    # KVP says the same, and said it before the NotReady POST.
    assert reports(pool)[-1] == description
    # (the "enter failed" event may follow it: FAILED is persisted before the NotReady POST)
    assert "PROVISIONING_REPORT" in failure["pool_keys"]
    assert [e for e in events(pool) if e[1] == "configuring"] == [("enter", "configuring"), ("leave", "configuring")]
    assert events(pool)[-1] == ("enter", "failed")
    leave = [report_fields(r.value) for r in records(pool) if "|leave|configuring|" in r.key][0]
    assert leave["result"] == "error"
    assert leave["msg"] == "IMDS gave no usable instance metadata within fabric.imds_timeout"
    # The log line and --status carry the same reason.
    assert "IMDS gave no usable instance metadata within fabric.imds_timeout" in out.stdout
    status = json.loads(vm.call("--status", "--json").stdout)
    assert status["last_error"]["reason"] == fields["reason"]


def test_goal_state_never_served_still_leaves_a_kvp_report(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    vm.set("fabric", wireserver_timeout=0.5)
    fabric.set_script("goalstate", [{"status": 500}] * 1000)
    assert vm.call().returncode == 1
    assert fabric.failure_reports() == []  # a health report needs a goal state: the fabric heard nothing
    fields = report_fields(reports(pool)[-1])
    assert fields["result"] == "error"
    assert fields["reason"] == "WireServer gave no usable goal state within fabric.wireserver_timeout"
    assert fields["budget_key"] == "fabric.wireserver_timeout" and fields["vm_id"] == vm.vm_id


def test_unreachable_wireserver_is_reported_through_kvp_only(vm: Env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    vm.set("fabric", wireserver_url=dead, imds_url=dead, network_timeout=0.6)
    pool = with_pool(vm)
    assert vm.call().returncode == 1
    fields = report_fields(reports(pool)[-1])
    assert fields["reason"] == "WireServer did not accept a connection within fabric.network_timeout"
    assert events(pool) == [("enter", "network_wait"), ("leave", "network_wait"), ("enter", "failed")]


def test_bad_instance_metadata_fails_with_the_same_reason_everywhere(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    doc = fabric.imds()
    doc["compute"]["osProfile"]["disablePasswordAuthentication"] = "maybe"
    fabric.imds_document = doc
    vm.set("fabric", imds_timeout=1.0)
    out = vm.call()
    assert out.returncode == 1
    [failure] = fabric.failure_reports()
    assert failure["description"] == reports(pool)[-1]
    assert 'instance metadata field is not "true" or "false"' in failure["description"]
    assert json.loads(vm.call("--status", "--json").stdout)["last_error"]["reason"] in failure["description"]


def test_json_health_protocol_ready(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    snapshot_pool_on_health_posts(fabric, pool)
    vm.set("fabric", health_protocol="provisioning")
    assert vm.call().returncode == 0
    assert fabric.requests("health") == []
    [ready] = fabric.requests("provisioning_health")
    assert ready["status"] == 200 and ready["body"] == '{"state":"Ready"}'
    assert ready["headers"]["x-ms-guest-agent-name"] == "azprov"
    assert ready["headers"]["Content-Type"] == "application/json"
    assert ready["pool_keys"][-1] == "PROVISIONING_REPORT"
    assert json.loads(vm.call("--status", "--json").stdout)["reported_ready_at"]


def test_json_health_protocol_failure_carries_the_kvp_report(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    vm.set("fabric", health_protocol="provisioning", imds_timeout=0.5)
    fabric.set_script("imds", [{"status": 503}] * 1000)
    assert vm.call().returncode == 1
    posts = [e for e in fabric.requests("provisioning_health") if json.loads(e["body"])["state"] == "NotReady"]
    assert len(posts) == 1
    body = json.loads(posts[0]["body"])
    assert body["details"]["subStatus"] == "ProvisioningFailed"
    assert body["details"]["description"] == reports(pool)[-1]


def test_json_health_protocol_retries_like_the_xml_one(vm: Env, fabric: FakeFabric) -> None:
    vm.set("fabric", health_protocol="provisioning")
    fabric.set_script("provisioning_health", [{"status": 503}, {"action": "reset"}])
    assert vm.call().returncode == 0
    assert [e["status"] for e in fabric.requests("provisioning_health")] == [503, None, 200]


def test_no_kvp_daemon_means_no_pool_and_one_debug_line(vm: Env, fabric: FakeFabric) -> None:
    out = vm.call(env={"SYSTEMD_LOG_LEVEL": "debug"})
    assert out.returncode == 0
    assert not (vm.root / "var").exists()
    assert out.stdout.count("KVP pool directory absent") == 1
    assert vm.call().stdout.count("KVP") == 0  # at the default level it is silent


def test_kvp_disabled_writes_nothing(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    vm.set("kvp", enabled=False)
    assert vm.call().returncode == 0
    assert not pool.exists()


def test_stale_pool_from_an_earlier_boot_is_replaced(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    pool.write_bytes(b"old-boot".ljust(RECORD_SIZE, b"\0"))
    os.utime(pool, (1.0, 1.0))  # 1970: before this machine's boot
    assert vm.call().returncode == 0
    assert "old-boot" not in [k for k, _ in decode_raw(pool.read_bytes())]


def test_status_kvp_decodes_the_pool(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    assert vm.call().returncode == 0
    text = vm.call("--status", "--kvp")
    assert text.returncode == 0
    assert "kvp pool:" in text.stdout and "PROVISIONING_REPORT" in text.stdout and str(pool) in text.stdout
    data = json.loads(vm.call("--status", "--json", "--kvp").stdout)
    assert data["kvp"]["path"] == str(pool)
    assert [r["key"] for r in data["kvp"]["records"] if r["key"] == "PROVISIONING_REPORT"] == ["PROVISIONING_REPORT"]
    assert vm.call("--kvp").returncode == 64


def test_console_shows_each_transition_and_the_result_on_one_line(vm: Env, fabric: FakeFabric) -> None:
    vm.set("fabric", imds_timeout=0.5)
    fabric.set_script("imds", [{"status": 500}] * 1000)
    plain = vm.call()
    changes = [line for line in plain.stdout.splitlines() if "state changed" in line]
    assert [line.split("state=")[1] for line in changes] == ["'goalstate'", "'reporting'", "'configuring'",
                                                             "'failed'"]
    final = plain.stdout.splitlines()[-1]
    assert "provisioning failed" in final
    assert "IMDS gave no usable instance metadata within fabric.imds_timeout" in final
    assert not any(line.startswith("<") for line in plain.stdout.splitlines())
    vm.new_vm()
    journal = vm.call(env={"JOURNAL_STREAM": "8:1234"})
    assert journal.stdout.splitlines() and all(line[:3] in ("<6>", "<4>", "<3>")
                                               for line in journal.stdout.splitlines())


def test_runner_splits_a_long_non_ascii_failure_across_records(tmp_path: Path) -> None:
    """The real runner, steps that fail with a long non-ASCII reason, the pool under a temporary root."""
    from statemachine.config import Config, PathsConfig
    from statemachine.context import Context, Outcome
    from statemachine.errors import AgentError
    from statemachine.machine import Phase
    from statemachine.persistence import Record
    from statemachine.runner import Runner, Store

    (tmp_path / "var" / "lib" / "hyperv").mkdir(parents=True)
    ctx = Context(Config(paths=PathsConfig(state_dir=str(tmp_path / "state"), root=str(tmp_path))))
    posted: list[str] = []

    def fails(ctx: Context, record: Record) -> Outcome:
        raise AgentError("Gerät antwortet nicht", detail="検証に失敗しました。" * 60)

    def report_failure(ctx: Context, record: Record, error: AgentError) -> bool:
        posted.append(str((record.last_error or {}).get("at")))
        return True

    steps = {Phase.NETWORK_WAIT: lambda c, r: Outcome("network_up"), Phase.GOALSTATE: fails}
    (tmp_path / "state").mkdir()
    final = Runner(ctx, steps, Store(tmp_path / "state" / "state.json"), report_failure).drive(
        Record(vm_id="vm-ü"))
    assert final.state is Phase.FAILED and posted
    raw = decode_raw((tmp_path / "var/lib/hyperv/.kvp_pool_1").read_bytes())
    split_keys = [k for k, _ in raw if k.endswith(("|1/2", "|2/2", "|1/3", "|2/3", "|3/3"))]
    assert split_keys == ["PROVISIONING_REPORT|1/2", "PROVISIONING_REPORT|2/2"]  # 512 characters, ~1.5 KB
    for _, value in raw:
        assert len(value.encode()) <= 1022
    pool = records(tmp_path / "var/lib/hyperv/.kvp_pool_1")
    [report] = [r for r in pool if r.key == "PROVISIONING_REPORT"]
    assert report.parts == 2 and len(report.value) <= 512
    fields = report_fields(report.value)
    assert fields["reason"] == "Gerät antwortet nicht" and fields["vm_id"] == "vm-ü"
    assert fields["timestamp"] == posted[0]  # the same stamp the health report used
    [leave] = [r for r in pool if "|leave|goalstate|" in r.key]
    assert report_fields(leave.value)["msg"] == "Gerät antwortet nicht"


def test_sigterm_is_told_to_the_host_and_the_next_run_says_resume(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    fabric.set_script("imds", [{"action": "hang", "delay": 60}])
    proc = vm.popen()
    deadline = time.monotonic() + 20
    while not fabric.requests("imds") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 143
    [leave] = [report_fields(r.value) for r in records(pool) if "|leave|configuring|" in r.key]
    assert leave["result"] == "terminated" and leave["msg"] == "signal 15"
    fabric.set_script("imds", [])
    assert vm.call().returncode == 0
    resumed = [report_fields(r.value) for r in records(pool) if "|enter|configuring|" in r.key]
    assert [e["msg"] for e in resumed] == ["reported", "resume"]


def test_kvp_command_prints_the_pool(vm: Env, fabric: FakeFabric) -> None:
    with_pool(vm)
    assert vm.call("kvp").returncode == 1  # nothing written yet
    assert vm.call().returncode == 0
    out = vm.run("kvp")  # the subcommand once as a process
    assert out.returncode == 0 and "PROVISIONING_REPORT" in out.stdout and "|enter|done|" in out.stdout
    data = json.loads(vm.call("kvp", "--json").stdout)
    assert data["records"][-1]["key"].split("|")[2:4] == ["enter", "done"]
    assert vm.call("kvp", "--status").returncode == 64


def test_status_kvp_still_shows_the_pool_when_the_record_is_broken(vm: Env, fabric: FakeFabric) -> None:
    with_pool(vm)
    assert vm.call().returncode == 0
    vm.state_file.write_text("{broken")
    out = vm.call("--status", "--kvp")
    assert out.returncode == 1 and "PROVISIONING_REPORT" in out.stdout
    data = json.loads(vm.call("--status", "--kvp", "--json").stdout)
    assert data["state"] == "unknown" and data["kvp"]["records"]


def test_health_report_refused_leaves_the_reason_in_kvp(vm: Env, fabric: FakeFabric) -> None:
    """The fabric answers 400 to every report: nothing reaches the portal, KVP still explains."""
    pool = with_pool(vm)
    fabric.set_script("health", [{"status": 400}] * 50)
    assert vm.call().returncode == 1
    assert fabric.ready_reports() == [] and fabric.failure_reports() == []
    fields = report_fields(reports(pool)[-1])
    assert fields["result"] == "error" and fields["reason"] == "fabric answered with an error status"
    assert fields["endpoint"] == "health" and fields["status"] == "400"
    assert events(pool)[-2:] == [("leave", "reporting"), ("enter", "failed")]


def test_unexpected_bug_is_reported_like_any_failure(vm: Env, fabric: FakeFabric) -> None:
    pool = with_pool(vm)
    out = vm.run(env={"AZPROV_FAILPOINT": "reporting.after_post:raise"})  # failpoints are armed at start-up
    assert out.returncode == 1
    [failure] = fabric.failure_reports()
    fields = report_fields(failure["description"])
    assert fields["reason"] == "unexpected internal error" and fields["error"] == "FailpointError"
    assert reports(pool)[-1] == failure["description"]
