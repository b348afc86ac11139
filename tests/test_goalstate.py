from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES

from statemachine.errors import GoalStateError, IncompleteGoalStateError
from states.goalstate import GoalState, parse_goal_state

EXPECTED = {
    "wala_goal_state.xml": GoalState("1", "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2",
                                     "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"),
    "wala_goal_state_no_certs.xml": GoalState("1", "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2",
                                              "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"),
    "wala_goal_state_no_extensions_config.xml": None,
    "wala_goal_state_remote_access.xml": None,
    "cloudinit_goal_state.xml": GoalState("1", "MyContainerId", "MyInstanceId"),
    "afterburn_goal_state.xml": None,
    "afterburn_goal_state_no_certs.xml": None,
    "azureinit_legacy_goal_state_minimal.xml": None,
}


def goal_state_fixtures() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*goal_state*.xml"))


def test_fixture_dir_is_there() -> None:
    assert len(goal_state_fixtures()) >= 9, f"expected the goal state fixtures at {FIXTURES}"


@pytest.mark.parametrize("path", goal_state_fixtures(), ids=lambda p: p.name)
def test_every_goal_state_fixture(path: Path) -> None:
    body = path.read_bytes()
    if path.name == "wala_goal_state_no_role_instance.xml":
        with pytest.raises(IncompleteGoalStateError):
            parse_goal_state(body)
        return
    gs = parse_goal_state(body)
    expected = EXPECTED[path.name]
    if expected is not None:
        assert gs == expected
    assert gs.incarnation and gs.container_id and gs.instance_id
    assert gs.instance_id == gs.instance_id.strip()


def test_afterburn_capture_ids() -> None:
    gs = parse_goal_state((FIXTURES / "afterburn_goal_state.xml").read_bytes())
    assert gs.incarnation == "42"
    assert gs.instance_id.endswith(".lars-test-1")


def test_no_role_instance_is_retryable() -> None:
    with pytest.raises(IncompleteGoalStateError) as info:
        parse_goal_state((FIXTURES / "wala_goal_state_no_role_instance.xml").read_bytes())
    assert info.value.retryable


MINIMAL = (b"<GoalState><Incarnation>{inc}</Incarnation><Container><ContainerId>c</ContainerId>"
           b"<RoleInstanceList><RoleInstance><InstanceId>i</InstanceId></RoleInstance></RoleInstanceList>"
           b"</Container></GoalState>")


def test_whitespace_around_ids_is_stripped() -> None:
    gs = parse_goal_state(MINIMAL.replace(b"{inc}", b"\n  3 \t"))
    assert gs.incarnation == "3"


def test_namespaced_goal_state_reads_the_same() -> None:
    body = MINIMAL.replace(b"{inc}", b"5").replace(b"<GoalState>", b'<g:GoalState xmlns:g="urn:x">')
    body = body.replace(b"</GoalState>", b"</g:GoalState>")
    assert parse_goal_state(body).incarnation == "5"
    default_ns = MINIMAL.replace(b"{inc}", b"6").replace(b"<GoalState>", b'<GoalState xmlns="urn:y">')
    assert parse_goal_state(default_ns) == GoalState("6", "c", "i")


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"<GoalState>", "not well-formed"),
    (b"<Other/>", "unexpected root"),
    (MINIMAL.replace(b"<Incarnation>{inc}</Incarnation>", b""), "lacks a required element"),
    (MINIMAL.replace(b"{inc}", b"1</Incarnation><Incarnation>2"), "duplicate element"),
    (MINIMAL.replace(b"{inc}", b"  "), "empty element"),
    (MINIMAL.replace(b"{inc}", b"9" * 2000), "overlong"),
    (b'<?xml version="1.0"?><!DOCTYPE g [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     + MINIMAL.replace(b"{inc}", b"&x;"), "DOCTYPE"),
])
def test_bad_goal_states(body: bytes, reason: str) -> None:
    with pytest.raises(GoalStateError, match=reason):
        parse_goal_state(body)


def test_utf16_with_bom_is_read() -> None:
    text = '<?xml version="1.0" encoding="utf-16"?>' + MINIMAL.decode().replace("{inc}", "4")
    assert parse_goal_state(text.encode("utf-16")).incarnation == "4"


def test_a_goal_state_is_reused_while_fresh_and_forgotten_after_a_410() -> None:
    from statemachine.config import Config
    from statemachine.context import Context
    from states import goalstate

    now = [100.0]
    ctx = Context(Config(), clock=lambda: now[0])
    gs = GoalState("1", "c", "i")
    ctx.run.goal_state = (100.0, gs)
    now[0] = 100.0 + goalstate.FRESH_S / 2
    assert goalstate.recent(ctx) == gs
    assert goalstate.recent(ctx) == gs  # a POST retried under throttling reuses it
    goalstate.forget(ctx)  # 410: the goal state changed
    assert goalstate.recent(ctx) is None
    ctx.run.goal_state = (100.0, gs)
    now[0] = 100.0 + goalstate.FRESH_S * 2
    assert goalstate.recent(ctx) is None
