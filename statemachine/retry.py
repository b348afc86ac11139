"""The one retry policy: jittered exponential backoff with a cap, bounded by a per-phase time budget.

Steps never sleep or loop; they raise a retryable `AgentError` and the runner asks this module how long to
wait. Fast when the fabric comes back (the first retries are a tenth of a second apart), gentle on a
struggling one (the cap), and never slower than a `Retry-After` the server asked for. The whole budget is
used: when the next wait would end past it, one last try is made just before the end.
"""

from __future__ import annotations

import math
import random
from typing import Callable, NamedTuple, TypeVar

from statemachine.errors import AgentError

T = TypeVar("T")

# Never wait longer than this for one Retry-After: a broken header must not eat the whole budget.
MAX_RETRY_AFTER = 60.0
# The time a last try needs before a budget ends to be worth making. A WireServer or IMDS round trip takes
# milliseconds, and a call's own deadline is shrunk to what is left of the budget, so this bounds the overrun.
LAST_TRY = 0.25


def capped_exponential(initial: float, multiplier: float, cap: float, step: int) -> float:
    """Pure: `min(cap, initial * multiplier**step)` for any step count, however large. The exponent is
    clamped to the step at which the cap is reached, so an attempt counter that runs for hours (a network
    that stays down, a fabric that keeps refusing) can never overflow the float power."""
    if step <= 0 or multiplier <= 1.0 or initial >= cap:
        return min(cap, initial)
    steps_to_cap = math.ceil(math.log(cap / initial, multiplier))
    return min(cap, initial * multiplier ** min(step, steps_to_cap))


class RetryPolicy(NamedTuple):
    initial: float = 0.1
    multiplier: float = 2.0
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (1-based). Pure but for `rand`."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, MAX_RETRY_AFTER)  # honour it exactly: no slower, no sooner
        ceiling = capped_exponential(self.initial, self.multiplier, self.cap, attempt - 1)
        # "Equal jitter": at least half the ceiling, so retries never bunch up at zero.
        return ceiling / 2 + rand() * ceiling / 2


def wait_before_retry(policy: RetryPolicy, attempt: int, retry_after: float | None, remaining: float,
                      rand: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait before retry number `attempt` with `remaining` seconds of budget left, or None when
    there is no room for another try. The whole budget is used: a wait (even a Retry-After) that would end
    past it is cut short so one last try lands just before the end, instead of giving up with budget unspent
    while the fabric may be about to recover."""
    if remaining <= LAST_TRY:
        return None
    return min(policy.delay(attempt, retry_after, rand), remaining - LAST_TRY)


WIRESERVER = RetryPolicy(initial=0.1, multiplier=2.0, cap=10.0)
IMDS = RetryPolicy(initial=0.1, multiplier=2.0, cap=5.0)  # IMDS allows about 5 requests/s


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; HTTP dates are not sent by the fabric)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def until_deadline(call: Callable[[], T], policy: RetryPolicy, deadline: float, clock: Callable[[], float],
                   sleep: Callable[[float], None]) -> T:
    """`call()` until it succeeds, waiting `policy`'s delays between retryable errors; the error that is
    not retryable, or would outlast `deadline`, is raised. For the loops that persist nothing between
    tries (the dry run, the failure report); the runner's own loop also saves the record each retry."""
    attempt = 0
    while True:
        try:
            return call()
        except AgentError as e:
            attempt += 1
            delay = wait_before_retry(policy, attempt, getattr(e, "retry_after", None), deadline - clock())
            if not e.retryable or delay is None:
                raise
            sleep(delay)
