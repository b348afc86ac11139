"""The one retry loop and its paces: delays, Retry-After, and the budget-bounded loop every wait goes through."""

from __future__ import annotations

import pytest
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from statemachine import retry
from statemachine.errors import AgentError, FabricError, GoneError, NoRouteError, NotListeningError, ThrottledError


def test_delays_grow_to_the_cap_with_jitter_never_below_half() -> None:
    policy = retry.RetryPolicy(initial=0.1, multiplier=2.0, cap=1.0)
    assert [policy.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5, 6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay(3, rand=lambda: 1.0) == pytest.approx(0.4)


def test_retry_after_is_a_floor_with_jitter_on_the_first_retry_then_growing_from_the_fourth() -> None:
    assert retry.WIRESERVER.delay(1, retry_after=1.0, rand=lambda: 0.0) == 1.0  # never before the server asked
    assert retry.WIRESERVER.delay(1, retry_after=1.0, rand=lambda: 1.0) == pytest.approx(1.3)
    assert retry.WIRESERVER.delay(2, retry_after=1.0, rand=lambda: 1.0) == 1.0  # keeps the first one's spread
    assert retry.WIRESERVER.delay(3, retry_after=1.0, rand=lambda: 1.0) == 1.0
    assert retry.WIRESERVER.delay(4, retry_after=1.0, rand=lambda: 1.0) == pytest.approx(2.0)
    assert retry.WIRESERVER.delay(5, retry_after=1.0, rand=lambda: 1.0) == pytest.approx(3.0)
    assert retry.WIRESERVER.delay(10**9, retry_after=2.0, rand=lambda: 1.0) == pytest.approx(8.0)
    assert retry.WIRESERVER.delay(1, retry_after=10_000, rand=lambda: 0.0) == retry.MAX_RETRY_AFTER
    # 503 with Retry-After: 1 three times in a row: at most 0.3 s on top, so one VM is Ready within 3.5 s.
    assert sum(retry.WIRESERVER.delay(n, retry_after=1.0, rand=lambda: 1.0) for n in (1, 2, 3)) <= 3.3 + 1e-9
    assert retry.parse_retry_after(" 2 ") == 2.0
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry.parse_retry_after("-1") is None


def test_until_deadline_retries_retryable_errors_then_succeeds() -> None:
    clock, calls = FakeClock(), []

    def call() -> str:
        calls.append(clock.now)
        if len(calls) < 3:
            raise FabricError("busy", retryable=True)
        return "ok"

    assert retry.until_deadline(call, retry.WIRESERVER, 30.0, clock, clock.sleep) == "ok"
    assert len(calls) == 3 and len(clock.slept) == 2


def test_until_deadline_raises_what_is_not_retryable_at_once() -> None:
    clock = FakeClock()

    def call() -> None:
        raise AgentError("bad request")

    with pytest.raises(AgentError, match="bad request"):
        retry.until_deadline(call, retry.WIRESERVER, 30.0, clock, clock.sleep)
    assert clock.slept == []


def test_until_deadline_uses_the_whole_budget_then_gives_up_before_the_deadline() -> None:
    clock, calls = FakeClock(), []

    def call() -> None:
        calls.append(clock.now)
        raise FabricError("down", retryable=True)

    with pytest.raises(FabricError):
        retry.until_deadline(call, retry.WIRESERVER, 5.0, clock, clock.sleep)
    assert clock.now < 5.0 and len(clock.slept) >= 4
    # The last wait was cut short so one more try landed just before the end, not a backoff step early.
    assert calls[-1] == pytest.approx(5.0 - retry.LAST_TRY)


def test_a_retry_after_past_the_budget_still_gets_one_last_try() -> None:
    assert retry.wait_before_retry(retry.WIRESERVER, 1, 30.0, remaining=10.0) == pytest.approx(10.0 - retry.LAST_TRY)
    assert retry.wait_before_retry(retry.WIRESERVER, 1, 1.0, remaining=10.0, rand=lambda: 0.0) == 1.0
    assert retry.wait_before_retry(retry.WIRESERVER, 1, 1.0, remaining=retry.LAST_TRY) is None


@given(attempt=st.integers(min_value=1, max_value=200),
       retry_after=st.none() | st.floats(min_value=0, max_value=1e6),
       remaining=st.floats(min_value=-10, max_value=1e6),
       rand=st.floats(min_value=0, max_value=1))
def test_a_wait_never_outlasts_the_budget_and_never_exceeds_the_policy(
        attempt: int, retry_after: float | None, remaining: float, rand: float) -> None:
    wait = retry.wait_before_retry(retry.WIRESERVER, attempt, retry_after, remaining, rand=lambda: rand)
    if remaining <= retry.LAST_TRY:
        assert wait is None
        return
    assert wait is not None
    assert 0 <= wait <= remaining - retry.LAST_TRY
    assert wait <= retry.WIRESERVER.delay(attempt, retry_after, rand=lambda: rand)


# An attempt counter can run for hours (a network that never comes up polls ~200 times a second), so every
# backoff function must stay finite and within its cap for any count, far beyond what a boot can reach.
huge_attempts = st.integers(0, 10**9)


@given(huge_attempts)
def test_backoff_never_overflows_for_any_attempt_count(attempt: int) -> None:
    for policy in (*retry.PACES.values(), retry.RetryPolicy(initial=0.001, multiplier=1.01, cap=5.0)):
        assert 0 <= policy.delay(attempt, rand=lambda: 1.0) <= policy.cap
        assert 0 <= policy.delay(attempt, rand=lambda: 0.0) <= policy.cap
        assert (retry.wait_before_retry(policy, attempt, None, 10.0, rand=lambda: 0.5) or 0) <= policy.cap
        for error in (NoRouteError("x"), NotListeningError("x"), GoneError("x"), FabricError("x", retryable=True),
                      ThrottledError("x", retryable=True)):
            assert 0 <= retry.backoff(error, attempt, policy, rand=lambda: 1.0) <= retry.PACES.get(
                error.pace, policy).cap


@given(st.floats(1e-4, 10), st.floats(1.0, 4.0), st.floats(1e-3, 100), huge_attempts)
def test_capped_exponential_is_the_capped_power(initial: float, multiplier: float, cap: float, step: int) -> None:
    value = retry.capped_exponential(initial, multiplier, cap, step)
    assert 0 < value <= max(cap, 0) or value == min(cap, initial)
    assert value <= cap
    if step <= 40:  # small enough to compute directly: the same figure as the naive formula
        assert value == pytest.approx(min(cap, initial * multiplier**step), rel=1e-9)


def test_the_paces_match_what_each_failure_costs() -> None:
    """No route: tight polling (Ready right behind the lease). Refused: full jitter up to a second (at most
    ~10 connects/s on average once backed off, back within 1.5 s). IMDS: never before 100 ms, jittered.
    410: at once for the first few rounds."""
    tight = [retry.backoff(NoRouteError("x"), n, retry.WIRESERVER, rand=lambda: 1.0) for n in range(1, 10_000)]
    assert max(tight) <= 0.005
    capped = retry.backoff(NotListeningError("x"), 10**6, retry.WIRESERVER, rand=lambda: 1.0)
    assert capped <= 1.0 and retry.backoff(NotListeningError("x"), 10**6, retry.WIRESERVER, rand=lambda: 0.0) == 0.0
    clock = FakeClock()
    for n in range(1, 200):  # a refusing fabric: expected waits once past the first two seconds
        clock.now += retry.backoff(NotListeningError("x"), n, retry.WIRESERVER, rand=lambda: 0.5)
    assert clock.now > 2.0 and 199 / clock.now < 10
    assert all(retry.IMDS.delay(n, rand=lambda: 0.0) >= 0.1 for n in (1, 2, 3))
    assert sum(retry.IMDS.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 4)) <= 3.75  # a ceiling that doubles
    assert retry.IMDS.delay(1, rand=lambda: 0.3) != retry.IMDS.delay(1, rand=lambda: 0.7)  # full jitter
    assert [retry.backoff(GoneError("x"), n, retry.WIRESERVER) for n in range(1, 6)] == [0.0] * 5
    assert retry.backoff(GoneError("x"), 6, retry.WIRESERVER) > 0


def test_a_429_spreads_a_crowd_over_the_time_its_rate_needs() -> None:
    """200 VMs throttled together by a service that takes 20 requests/s need ten seconds: a 429 without
    Retry-After waits at least a second and is spread over about ten, so the retries of a crowd arrive at
    about the rate the service can take instead of in bursts it must refuse again."""
    throttled = ThrottledError("x", retryable=True)
    assert throttled.pace == "throttled"
    first = [retry.backoff(throttled, 1, retry.IMDS, rand=lambda i=i: i / 100) for i in range(101)]
    assert min(first) >= 1.0 and max(first) >= 10.0
    crowd, rate = 180, 20.0  # the VMs refused in the first second, the service's rate
    assert crowd / (max(first) - min(first)) <= 1.5 * rate  # drawn evenly over the window: their arrival rate
    assert retry.backoff(throttled, 10**9, retry.IMDS, rand=lambda: 1.0) <= retry.THROTTLED.cap
    with_header = ThrottledError("x", retryable=True, retry_after=2.0)
    assert 2.0 <= retry.backoff(with_header, 1, retry.IMDS, rand=lambda: 0.5) <= 2.0 * 1.3  # the header rules


def test_single_vm_budgets_for_5xx_and_410() -> None:
    """500 three times: Ready within 1.5 s. 410 three times: within 0.5 s (no waits at all)."""
    worst = sum(retry.backoff(FabricError("x", retryable=True), n, retry.WIRESERVER, rand=lambda: 1.0)
                for n in (1, 2, 3))
    assert worst <= 1.0
    assert sum(retry.backoff(GoneError("x"), n, retry.WIRESERVER) for n in (1, 2, 3)) == 0.0


def test_until_deadline_reports_each_retry_before_sleeping() -> None:
    clock, seen = FakeClock(), []

    def call() -> None:
        raise NoRouteError("no route")

    with pytest.raises(NoRouteError):
        retry.until_deadline(call, retry.WIRESERVER, 1.0, clock, clock.sleep, lambda e, d: seen.append(d))
    assert seen == clock.slept and len(seen) > 100  # ~200 polls a second, none saved by the loop itself


@given(huge_attempts, st.floats(0, 1e6), st.floats(0, 1))
def test_retry_after_jitter_is_bounded_and_grows_once_past_the_single_vm_budget(
        attempt: int, retry_after: float, rand: float) -> None:
    spread = retry.retry_after_spread(attempt)
    assert 0 <= spread <= retry.RETRY_AFTER_JITTER_MAX
    if attempt > retry.RETRY_AFTER_EARLY:
        assert retry.RETRY_AFTER_JITTER <= spread <= retry.retry_after_spread(attempt + 1)
    wait = retry.with_retry_after(retry_after, attempt, rand=lambda: rand)
    floor = min(retry_after, retry.MAX_RETRY_AFTER)
    assert floor <= wait <= floor * (1 + retry.RETRY_AFTER_JITTER_MAX)


def test_a_fleet_throttled_for_long_spreads_its_retries() -> None:
    """Waits after the same Retry-After, drawn evenly: little spread early (a single VM's budget), then a
    spread whose coefficient of variation passes 0.3 once a VM has been throttled six times."""
    def cv(attempt: int) -> float:
        waits = [retry.with_retry_after(1.0, attempt, rand=lambda i=i: i / 100) for i in range(101)]
        mean = sum(waits) / len(waits)
        return float((sum((w - mean) ** 2 for w in waits) / len(waits)) ** 0.5 / mean)

    assert 0 < cv(1) < 0.1 and cv(2) == cv(3) == 0
    assert cv(1) < cv(4) < cv(5) < cv(6) == cv(7)
    assert cv(6) >= 0.3
