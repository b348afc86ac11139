from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES

from statemachine.errors import AgentError
from states.reporting import MAX_DESCRIPTION, HealthReport, failure_description, parse_health, render_health


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*health*.xml")), ids=lambda p: p.name)
def test_peer_health_reports_parse(path: Path) -> None:
    report = parse_health(path.read_bytes())
    assert report.state in ("Ready", "NotReady")
    if report.state == "NotReady":
        assert report.substatus in ("ProvisioningFailed", "Provisioning")


def test_ready_report_matches_the_peers_structure() -> None:
    ours = parse_health(render_health(HealthReport("1", "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2",
                                                   "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0",
                                                   "Ready")))
    theirs = parse_health((FIXTURES / "wala_health_ready.xml").read_bytes())
    assert ours == theirs


def test_failure_report_matches_cloud_init() -> None:
    theirs = parse_health((FIXTURES / "cloudinit_health_not_ready_provisioning_failed.xml").read_bytes())
    ours = parse_health(render_health(HealthReport("1", "MyContainerId", "MyInstanceId", "NotReady",
                                                   "ProvisioningFailed", "TestDesc")))
    assert ours == theirs


def test_description_format_and_limit() -> None:
    error = AgentError("imds did not answer", budget_s=300, detail="x|y" * 400)
    text = failure_description(error, "vm-1", "2026-01-01T00:00:00.000Z")
    assert len(text) <= MAX_DESCRIPTION
    assert text.startswith("result=error|reason=imds did not answer|agent=azprov/0.1.0|budget_s=300|detail=x%7Cy")
    assert text.endswith("|vm_id=vm-1|timestamp=2026-01-01T00:00:00.000Z"
                         "|documentation_url=https://aka.ms/linuxprovisioningerror")
    assert all("=" in part for part in text.split("|"))  # values cannot break the key=value list apart


def test_rendered_xml_escapes_specials() -> None:
    body = render_health(HealthReport("1<2", "a&b", "</InstanceId>", "NotReady", "ProvisioningFailed", "<x>"))
    assert b"</InstanceId></InstanceId>" not in body
    assert parse_health(body).instance_id == "</InstanceId>"
