"""Property tests for the XML round-trips and the parsers' error contract."""

from __future__ import annotations

from conftest import examples
from healthparse import parse_health
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from statemachine.errors import GoalStateError
from statemachine.health import HealthReport, render_health
from states.goalstate import GoalState, parse_goal_state

# lxml refuses control characters, surrogates and unassigned code points; ids are trimmed by the parser.
xml_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Cn", "Co"), exclude_characters="\ufffe\uffff"),
                   min_size=1, max_size=60).map(str.strip).filter(bool)


def render_goal_state(gs: GoalState) -> bytes:
    root = etree.Element("GoalState")
    etree.SubElement(root, "Version").text = "2012-11-30"
    etree.SubElement(root, "Incarnation").text = gs.incarnation
    container = etree.SubElement(root, "Container")
    etree.SubElement(container, "ContainerId").text = gs.container_id
    instance = etree.SubElement(etree.SubElement(container, "RoleInstanceList"), "RoleInstance")
    etree.SubElement(instance, "InstanceId").text = gs.instance_id
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


@settings(max_examples=examples(200))
@given(st.builds(GoalState, xml_text, xml_text, xml_text))
def test_goal_state_round_trip(gs: GoalState) -> None:
    assert parse_goal_state(render_goal_state(gs)) == gs


@settings(max_examples=examples(200))
@given(st.builds(HealthReport, xml_text, xml_text, xml_text, st.sampled_from(["Ready", "NotReady"]),
                 st.none() | st.sampled_from(["ProvisioningFailed", "Provisioning"]), st.none() | xml_text))
def test_health_round_trip(report: HealthReport) -> None:
    if report.substatus is None:  # without Details there is no Description to carry
        expected = HealthReport(report.incarnation, report.container_id, report.instance_id, report.state)
    else:
        expected = report._replace(description=report.description or "")
    assert parse_health(render_health(report)) == expected


@settings(max_examples=examples(300))
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_goal_state_error(body: bytes) -> None:
    try:
        parse_goal_state(body)
    except GoalStateError:
        pass


@settings(max_examples=examples(200))
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_goal_state_error(text: str) -> None:
    for parse in (parse_goal_state, parse_health):
        try:
            parse(("<GoalState>" + text).encode("utf-8", "surrogatepass"))
        except GoalStateError:
            pass
