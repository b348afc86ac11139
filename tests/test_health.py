"""Every report body: the report line (layout, escaping, the 512-character limit), the health XML against
the peers' documents, and the JSON health body against azure-init's, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES
from healthparse import ProvisioningHealth, parse_health, parse_provisioning_health
from hypothesis import given
from hypothesis import strategies as st

from statemachine.errors import AgentError, GoalStateError
from statemachine.health import (
    DOCUMENTATION_URL,
    MAX_DESCRIPTION,
    HealthReport,
    decode_fields,
    encode_fields,
    escape_value,
    failure_description,
    failure_report,
    render_health,
    render_provisioning_health,
    report_fields,
    success_report,
    unescape_value,
)
from statemachine.text import clean, representable

# Text every sink can carry as it is (no lone surrogates, no noncharacters or unassigned code points);
# the rest is made representable on the way out, which test_any_text_travels_representable pins.
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cn"]))
KEY = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
TS = "2026-11-23T14:00:00.000Z"


def test_success_report() -> None:
    assert success_report("vm-1", TS) == f"result=success|agent=azprov/0.1.0|vm_id=vm-1|timestamp={TS}"


def test_failure_report_has_cloud_init_order() -> None:
    text = failure_report("IMDS did not answer", {"budget_s": 300.0, "url": "http://x/?a=b"}, "vm-1", TS)
    assert text == ("result=error|reason=IMDS did not answer|agent=azprov/0.1.0|budget_s=300.0"
                    f"|url=http://x/?a%3Db|vm_id=vm-1|timestamp={TS}|documentation_url={DOCUMENTATION_URL}")
    assert [k for k, _ in decode_fields(text)] == ["result", "reason", "agent", "budget_s", "url", "vm_id",
                                                   "timestamp", "documentation_url"]


def test_unknown_vm_id_is_said_so() -> None:
    assert report_fields(failure_report("r", {}, None, TS))["vm_id"] == "unknown"


@pytest.mark.parametrize("value", ["a|b", "a=b", "100%", "line\nbreak", "tab\there", "%7C"])
def test_specials_are_escaped_and_restored(value: str) -> None:
    escaped = escape_value(value)
    assert not set(escaped) & set("|=\n\t")
    assert unescape_value(escaped) == value


@given(st.lists(st.tuples(KEY, TEXT), max_size=8))
def test_fields_round_trip(items: list[tuple[str, str]]) -> None:
    assert decode_fields(encode_fields(items)) == items


@given(st.lists(st.tuples(KEY, st.text()), max_size=8))
def test_any_text_travels_representable(items: list[tuple[str, str]]) -> None:
    wire = encode_fields(items)
    assert representable(wire) == wire  # the report line can always be sent and stored
    assert [k for k, _ in decode_fields(wire)] == [k for k, _ in items]


@given(reason=TEXT.filter(bool), data=st.dictionaries(KEY, TEXT, max_size=6), vm_id=st.uuids().map(str))
def test_report_fits_and_keeps_its_identity(reason: str, data: dict[str, str], vm_id: str) -> None:
    data = {k: v for k, v in data.items() if k not in ("result", "reason", "agent", "vm_id", "timestamp",
                                                       "documentation_url")}
    text = failure_report(reason, data, vm_id, TS)
    assert len(text) <= MAX_DESCRIPTION
    parsed = report_fields(text)
    assert parsed["result"] == "error" and parsed["vm_id"] == vm_id and parsed["timestamp"] == TS
    assert parsed["agent"] == "azprov/0.1.0" and parsed["documentation_url"] == DOCUMENTATION_URL
    whole = len(failure_report(reason, data, vm_id, TS, limit=10**6)) <= MAX_DESCRIPTION
    if whole:  # nothing had to be cut: everything comes back exactly
        assert parsed["reason"] == reason and all(parsed[k] == v for k, v in data.items())
    else:  # what was kept is a prefix, marked with '...'
        assert parsed.get("reason", "")[:-3] == reason[: len(parsed.get("reason", "")) - 3]


def test_long_supporting_data_is_cut_never_the_ids() -> None:
    text = failure_report("IMDS did not answer", {"budget_s": 300, "detail": "x|y" * 400, "after": "z"},
                          "vm-1", TS)
    assert MAX_DESCRIPTION - 3 <= len(text) <= MAX_DESCRIPTION  # an escape (%7C) is never cut apart
    parsed = report_fields(text)
    assert parsed["detail"].endswith("...") and "after" not in parsed
    assert text.endswith(f"|vm_id=vm-1|timestamp={TS}|documentation_url={DOCUMENTATION_URL}")


def test_peer_fixture_parses_with_the_same_reader() -> None:
    doc = json.loads((FIXTURES / "azureinit_provisioning_health_failed.json").read_text())
    parsed = report_fields(doc["details"]["description"])
    assert parsed["result"] == "error" and parsed["reason"] == "failed to load sshd config"
    assert parsed["documentation_url"] == DOCUMENTATION_URL


@given(st.text(), st.dictionaries(KEY, st.text(), max_size=4))
def test_report_is_always_valid_utf8(reason: str, data: dict[str, str]) -> None:
    text = failure_report(reason, data, "vm", TS)
    text.encode("utf-8")  # strict: lone surrogates were replaced
    assert len(text) <= MAX_DESCRIPTION


# ---- the health XML ----------------------------------------------------------------------------------------

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


# ---- the JSON health body -----------------------------------------------------------------------------------

def test_ready_body_is_azure_inits_byte_for_byte() -> None:
    expected = (FIXTURES / "azureinit_provisioning_health_ready.json").read_bytes().strip()
    assert render_provisioning_health("Ready") == expected


def test_failed_body_is_azure_inits_byte_for_byte() -> None:
    expected = (FIXTURES / "azureinit_provisioning_health_failed.json").read_bytes().strip()
    description = json.loads(expected)["details"]["description"]
    assert render_provisioning_health("NotReady", "ProvisioningFailed", description) == expected


@pytest.mark.parametrize("name", ["ready", "failed"])
def test_fixtures_parse(name: str) -> None:
    parsed = parse_provisioning_health((FIXTURES / f"azureinit_provisioning_health_{name}.json").read_bytes())
    assert parsed.state == ("Ready" if name == "ready" else "NotReady")


@given(description=st.text(), substatus=st.sampled_from(["ProvisioningFailed", "Provisioning"]))
def test_round_trip(description: str, substatus: str) -> None:
    body = render_provisioning_health("NotReady", substatus, description)
    # Surrogates, noncharacters and C0 controls arrive as U+FFFD: everything else exactly.
    assert parse_provisioning_health(body) == ProvisioningHealth("NotReady", substatus, clean(description))


@pytest.mark.parametrize("body", [b"", b"[]", b'{"state":"Up"}', b"\xff", b'{"state":"NotReady","details":3}'])
def test_bad_bodies_raise_goal_state_error(body: bytes) -> None:
    with pytest.raises(GoalStateError):
        parse_provisioning_health(body)


def test_unknown_state_is_refused() -> None:
    with pytest.raises(AgentError):
        render_provisioning_health("Broken")


# ---- any text: every body can be built ----------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=80)


@given(reason=ANY_TEXT, value=ANY_TEXT, vm_id=ANY_TEXT)
def test_every_body_builds_from_any_text(reason: str, value: str, vm_id: str) -> None:
    description = failure_description(AgentError(reason or "r", value=value), vm_id, "t")
    description.encode("utf-8")
    xml = render_health(HealthReport("1", "c", "i", "NotReady", "ProvisioningFailed", description))
    assert parse_health(xml).description == description  # already representable: carried exactly
    body = render_provisioning_health("NotReady", "ProvisioningFailed", description)
    assert parse_provisioning_health(body).description == description


@pytest.mark.parametrize("bad", ["\ud800", "\ufffe", "\uffff", "\x01", "\U0010ffff"])
def test_unrepresentable_characters_become_the_replacement_character(bad: str) -> None:
    text = failure_report(f"user {bad}x", {"name": bad}, "vm", "t")
    assert report_fields(text)["reason"] == ("user \x01x" if bad == "\x01" else "user \ufffdx")
    xml = render_health(HealthReport(bad, bad, bad, "NotReady", "ProvisioningFailed", bad))
    assert parse_health(xml).description == "\ufffd"
