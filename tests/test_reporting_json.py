"""The JSON health body of `POST /provisioning/health`, against azure-init's payloads."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from statemachine.errors import AgentError, GoalStateError
from states.reporting_json import ProvisioningHealth, parse_provisioning_health, render_provisioning_health


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
    assert parse_provisioning_health(body) == ProvisioningHealth("NotReady", substatus, description)


@pytest.mark.parametrize("body", [b"", b"[]", b'{"state":"Up"}', b"\xff", b'{"state":"NotReady","details":3}'])
def test_bad_bodies_raise_goal_state_error(body: bytes) -> None:
    with pytest.raises(GoalStateError):
        parse_provisioning_health(body)


def test_unknown_state_is_refused() -> None:
    with pytest.raises(AgentError):
        render_provisioning_health("Broken")
