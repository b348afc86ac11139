"""KVP event records and the provisioning report record, written through a real pool in tmp_path."""

from __future__ import annotations

from pathlib import Path

from statemachine.health import REPORT_KEY, event_key, report_fields, success_report
from statemachine.kvp import MAX_KEY_BYTES, KvpPool, Telemetry


def telemetry(tmp_path: Path) -> Telemetry:
    (tmp_path / "hyperv").mkdir()
    pool = KvpPool(tmp_path / "hyperv" / ".kvp_pool_1", boot=lambda: 0.0)
    return Telemetry(pool, run_id="r1", clock=lambda: "2026-11-23T00:00:00.000Z")


def test_events_have_unique_ordered_keys_and_escaped_values(tmp_path: Path) -> None:
    t = telemetry(tmp_path)
    t.vm_id = "VM-1"
    t.entered("goalstate", "network_up")
    t.left("goalstate", "error", 1.23456, "bad|answer=x")
    assert t.pool is not None
    records = t.pool.read()
    assert [r.key for r in records] == ["azprov|vm-1|enter|goalstate|r1.001", "azprov|vm-1|leave|goalstate|r1.002"]
    left = report_fields(records[1].value)
    assert left == {"name": "goalstate", "event": "leave", "result": "error", "duration_s": "1.235",
                    "msg": "bad|answer=x", "timestamp": "2026-11-23T00:00:00.000Z"}


def test_report_is_written_once_per_result(tmp_path: Path) -> None:
    t = telemetry(tmp_path)
    assert t.report(success_report("vm", "t1"))
    assert not t.report(success_report("vm", "t2"))  # a retried POST does not repeat it
    assert t.report("result=error|reason=x")
    assert t.pool is not None
    assert [(r.key, report_fields(r.value)["result"]) for r in t.pool.read()] == [
        (REPORT_KEY, "success"), (REPORT_KEY, "error")]


def test_disabled_telemetry_does_nothing(tmp_path: Path) -> None:
    t = Telemetry(None)
    t.entered("network_wait")
    t.left("network_wait", "success", 0.1)
    assert not t.report("result=success")
    assert list(tmp_path.iterdir()) == []


def test_event_keys_stay_within_the_kvp_limit() -> None:
    key = event_key("x" * 300, "leave", "A Very Long State Name " * 20, "deadbeef", 999)
    assert len(key.encode()) <= MAX_KEY_BYTES - len("|99/99")  # room for a split suffix
    assert key.startswith("azprov|xxx") and "|leave|a_very_long_state_name_" in key
