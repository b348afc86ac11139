"""The one retry policy: delays, Retry-After, and the budget-bounded loop the dry run and failure report use."""

from __future__ import annotations

import pytest

from statemachine import retry
from statemachine.errors import AgentError, FabricError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_delays_grow_to_the_cap_with_jitter_never_below_half() -> None:
    policy = retry.RetryPolicy(initial=0.1, multiplier=2.0, cap=1.0)
    assert [policy.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5, 6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay(3, rand=lambda: 1.0) == pytest.approx(0.4)


def test_retry_after_is_honoured_exactly_but_capped() -> None:
    assert retry.WIRESERVER.delay(1, retry_after=1.0) == 1.0
    assert retry.WIRESERVER.delay(1, retry_after=10_000) == retry.MAX_RETRY_AFTER
    assert retry.parse_retry_after(" 2 ") == 2.0
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry.parse_retry_after("-1") is None


def test_until_deadline_retries_retryable_errors_then_succeeds() -> None:
    clock, calls = Clock(), []

    def call() -> str:
        calls.append(clock.now)
        if len(calls) < 3:
            raise FabricError("busy", retryable=True)
        return "ok"

    assert retry.until_deadline(call, retry.WIRESERVER, 30.0, clock, clock.sleep) == "ok"
    assert len(calls) == 3 and len(clock.slept) == 2


def test_until_deadline_raises_what_is_not_retryable_at_once() -> None:
    clock = Clock()

    def call() -> None:
        raise AgentError("bad request")

    with pytest.raises(AgentError, match="bad request"):
        retry.until_deadline(call, retry.WIRESERVER, 30.0, clock, clock.sleep)
    assert clock.slept == []


def test_until_deadline_gives_up_before_the_deadline() -> None:
    clock = Clock()

    def call() -> None:
        raise FabricError("down", retryable=True)

    with pytest.raises(FabricError):
        retry.until_deadline(call, retry.WIRESERVER, 5.0, clock, clock.sleep)
    assert clock.now < 5.0 and len(clock.slept) >= 4
