"""The pipe-delimited provisioning report: layout, escaping, the 512-character limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.report import (
    DOCUMENTATION_URL,
    MAX_DESCRIPTION,
    decode_fields,
    encode_fields,
    escape_value,
    failure_report,
    report_fields,
    success_report,
    unescape_value,
)

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
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
    import json

    from conftest import FIXTURES

    doc = json.loads((FIXTURES / "azureinit_provisioning_health_failed.json").read_text())
    parsed = report_fields(doc["details"]["description"])
    assert parsed["result"] == "error" and parsed["reason"] == "failed to load sshd config"
    assert parsed["documentation_url"] == DOCUMENTATION_URL


@given(st.text(), st.dictionaries(KEY, st.text(), max_size=4))
def test_report_is_always_valid_utf8(reason: str, data: dict[str, str]) -> None:
    text = failure_report(reason, data, "vm", TS)
    text.encode("utf-8")  # strict: lone surrogates were replaced
    assert len(text) <= MAX_DESCRIPTION
