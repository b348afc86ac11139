from __future__ import annotations

import time

import pytest
from fakefabric import FakeFabric

from statemachine import fabric
from statemachine.errors import FabricError, GoneError


def clients(fake: FakeFabric, timeout: float = 2.0, max_body: int = fabric.MAX_BODY) -> tuple[
        fabric.WireServer, fabric.Imds]:
    http = fabric.Http(fabric.new_session(), timeout, max_body)
    return fabric.WireServer(http, fake.url), fabric.Imds(http, fake.url)


def test_goal_state_request_carries_the_protocol_headers(fabric: FakeFabric) -> None:
    wire, _ = clients(fabric)
    assert b"<Incarnation>1</Incarnation>" in wire.get_goal_state()
    headers = fabric.requests("goalstate")[0]["headers"]
    assert headers["x-ms-version"] == "2012-11-30"
    assert headers["x-ms-agent-name"] == "azprov"


def test_imds_request_carries_metadata_header(fabric: FakeFabric) -> None:
    _, imds = clients(fabric)
    assert b"web-01" in imds.get_instance()
    entry = fabric.requests("imds")[0]
    assert entry["headers"]["Metadata"] == "true" and "X-Forwarded-For" not in entry["headers"]
    assert "api-version=2021-08-01" in entry["path"] and "extended=true" in entry["path"]


@pytest.mark.parametrize("status, retryable", [(500, True), (503, True), (429, True), (408, True),
                                               (400, False), (403, False), (404, False)])
def test_wireserver_status_classification(fabric: FakeFabric, status: int, retryable: bool) -> None:
    fabric.set_script("goalstate", [{"status": status}])
    wire, _ = clients(fabric)
    with pytest.raises(FabricError) as info:
        wire.get_goal_state()
    assert info.value.retryable is retryable
    assert info.value.supporting_data["status"] == status


@pytest.mark.parametrize("status", [404, 410, 429, 500])
def test_imds_retries_its_provisioning_codes(fabric: FakeFabric, status: int) -> None:
    fabric.set_script("imds", [{"status": status}])
    _, imds = clients(fabric)
    with pytest.raises(FabricError) as info:
        imds.get_instance()
    assert info.value.retryable


def test_retry_after_is_passed_on(fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"status": 503, "headers": {"Retry-After": "2"}}])
    wire, _ = clients(fabric)
    with pytest.raises(FabricError) as info:
        wire.get_goal_state()
    assert info.value.retry_after == 2.0


def test_health_410_is_gone(fabric: FakeFabric) -> None:
    fabric.set_script("health", [{"action": "bump"}])
    wire, _ = clients(fabric)
    with pytest.raises(GoneError):
        wire.post_health(b"<Health/>")
    assert fabric.incarnation == "2"


@pytest.mark.parametrize("action", ["reset", "close"])
def test_transport_failures_are_retryable(fabric: FakeFabric, action: str) -> None:
    fabric.set_script("goalstate", [{"action": action}])
    wire, _ = clients(fabric)
    with pytest.raises(FabricError) as info:
        wire.get_goal_state()
    assert info.value.retryable


def test_hang_is_bounded_by_the_per_call_timeout(fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"action": "hang", "delay": 30}])
    wire, _ = clients(fabric, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(FabricError):
        wire.get_goal_state()
    assert time.monotonic() - started < 5  # a bound on hanging, not a speed claim


def test_slow_body_is_bounded_by_the_overall_deadline(fabric: FakeFabric) -> None:
    # One byte every 0.2 s never trips a per-read timeout; only an overall deadline stops it.
    fabric.set_script("goalstate", [{"action": "slow", "delay": 0.2}])
    wire, _ = clients(fabric, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(FabricError, match="deadline"):
        wire.get_goal_state()
    assert time.monotonic() - started < 5


def test_oversized_body_is_refused(fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"status": 200, "body": "x" * 5000}])
    wire, _ = clients(fabric, max_body=1000)
    with pytest.raises(FabricError, match="too large"):
        wire.get_goal_state()


def test_nothing_listening_is_retryable() -> None:
    fake = FakeFabric()
    fake.reserve_port()  # a port nobody listens on
    wire, _ = clients(fake)
    with pytest.raises(FabricError) as info:
        wire.get_goal_state()
    assert info.value.retryable


def test_proxy_environment_is_ignored(fabric: FakeFabric, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: a dead proxy
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    wire, _ = clients(fabric)
    assert wire.get_goal_state()
