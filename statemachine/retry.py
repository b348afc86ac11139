"""The one retry loop and its policy: how long to wait after which error, bounded by a time budget.

Steps never sleep or loop: they raise an `AgentError`, and `until_deadline` (the only retry loop, which the
runner drives) asks `backoff` how long to wait. Whether an error is worth retrying, and at which pace, is
a property of its type (`retryable`, `pace`, `at_once`, `retry_after`); this module only does the sums.

The paces, each chosen for what a retry costs the other side:
- no route yet (ENETUNREACH & co: no packet leaves the VM): poll tightly, so Ready follows the DHCP lease
  within milliseconds;
- refused or timed-out connects (a round trip to the host each): full jitter up to 0.3 s, so a scale set
  booting after an outage asks a restarting fabric about six times a second per VM rather than hundreds,
  yet is back within 0.3 s of it listening again (a fleet of 200 on two cores then needs about a second
  more to get every Ready through the CPU);
- the WireServer's 5xx: quick first retries (a single VM recovers fast), growing to a cap;
- IMDS (throttles at about 5 requests/s per VM): full jitter from 100 ms under a ceiling that doubles, so
  VMs booted together spread out;
- 429 without Retry-After (IMDS's answer past its rate): full jitter over about ten seconds, never before
  one. A 429 says the service is over its rate, usually because many VMs asked at once, and a crowd's
  retries only fit that rate when spread this wide (200 VMs against 20 requests/s need ten seconds
  whatever they do; retrying sooner only adds refused requests). From IMDS that delays the configure
  steps, not the Ready;
- Retry-After is a floor, with jitter on top: up to +30 % on the first throttled retry and none on the next
  two (a single VM throttled three times with Retry-After: 1 still waits at most 3.3 s), then +100 % growing
  to +300 %, so VMs that stay throttled together spread out instead of coming back in waves.
The whole budget is used: when the next wait would end past it, one last try is made just before the end.
"""

from __future__ import annotations

import math
import random
from typing import Callable, NamedTuple, TypeVar

from statemachine.errors import AgentError

T = TypeVar("T")

# Never wait longer than this for one Retry-After: a broken header must not eat the whole budget.
MAX_RETRY_AFTER = 60.0
# Jitter on top of a Retry-After, as a fraction of it. The single-VM budget (503 three times with
# Retry-After: 1, Ready within 3.5 s of the start) leaves about 0.3 s for the first three throttled retries
# together. All of it goes to the first: that is when a fleet released together is in lockstep, and a fixed
# wait after it keeps the spread it made. From the fourth on, a VM is throttled with many others, and the
# jitter ceiling doubles from RETRY_AFTER_JITTER up to RETRY_AFTER_JITTER_MAX: the longer a fleet stays
# throttled, the wider it spreads its retries and the less it asks of the server.
RETRY_AFTER_FIRST_JITTER = 0.3
RETRY_AFTER_EARLY = 3  # throttled retries within the single-VM budget
RETRY_AFTER_JITTER = 1.0
RETRY_AFTER_JITTER_MAX = 3.0
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
    full_jitter: bool = False  # False: "equal jitter", at least half the ceiling
    floor: float = 0.0  # full jitter never waits less than this

    def delay(self, attempt: int, retry_after: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (1-based). Pure but for `rand`."""
        if retry_after is not None and retry_after >= 0:
            return with_retry_after(retry_after, attempt, rand)
        ceiling = capped_exponential(self.initial, self.multiplier, self.cap, attempt - 1)
        if self.full_jitter:
            low = min(self.floor, ceiling)
            return low + rand() * (ceiling - low)
        return ceiling / 2 + rand() * ceiling / 2


def with_retry_after(retry_after: float, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The server's Retry-After as a floor (capped), plus jitter that grows with the throttled attempts."""
    floor = min(retry_after, MAX_RETRY_AFTER)
    return min(MAX_RETRY_AFTER, floor + rand() * retry_after_spread(attempt) * floor)


def retry_after_spread(attempt: int) -> float:
    """Pure: the jitter ceiling on top of a Retry-After, as a fraction of it, for throttled retry `attempt`."""
    if attempt <= 1:
        return RETRY_AFTER_FIRST_JITTER
    if attempt <= RETRY_AFTER_EARLY:
        return 0.0
    return capped_exponential(RETRY_AFTER_JITTER, 2.0, RETRY_AFTER_JITTER_MAX, attempt - RETRY_AFTER_EARLY - 1)


WIRESERVER = RetryPolicy(initial=0.1, multiplier=2.0, cap=10.0)  # 5xx three times: Ready within ~1 s
# IMDS: the ceiling doubles, so a fleet throttled together thins out within a second or two.
IMDS = RetryPolicy(initial=0.25, multiplier=2.0, cap=5.0, full_jitter=True, floor=0.1)  # 4 errors: <= 3.75 s
# No route: the probe itself waited for the kernel's next route change (states.network_wait), so the next
# try comes at once; where rtnetlink is missing this is a poll at ~50 us of CPU a probe, ~1% of a core.
NO_ROUTE = RetryPolicy(initial=0.002, multiplier=1.5, cap=0.005)
CONNECT = RetryPolicy(initial=0.01, multiplier=1.5, cap=0.3, full_jitter=True)  # ~6 connects/s once capped
THROTTLED = RetryPolicy(initial=10.0, multiplier=1.5, cap=20.0, full_jitter=True, floor=1.0)
# An error's `pace` names its policy here; an empty pace means the phase's own policy.
PACES = {"no_route": NO_ROUTE, "connect": CONNECT, "wireserver": WIRESERVER, "imds": IMDS, "throttled": THROTTLED}


def backoff(error: AgentError, attempt: int, policy: RetryPolicy,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` after `error`, in a phase whose policy is `policy`."""
    if attempt <= error.at_once:
        return 0.0
    return PACES.get(error.pace, policy).delay(attempt, error.retry_after, rand)


def wait_before_retry(policy: RetryPolicy, attempt: int, retry_after: float | None, remaining: float,
                      rand: Callable[[], float] = random.random) -> float | None:
    """`policy`'s wait, or None when there is no room for another try in `remaining` seconds."""
    return fit(policy.delay(attempt, retry_after, rand), remaining)


def fit(delay: float, remaining: float) -> float | None:
    """A wait (even a Retry-After) that would end past the budget is cut short so one last try lands just
    before the end, instead of giving up with budget unspent while the fabric may be about to recover.
    None: no room for another try."""
    if remaining <= LAST_TRY:
        return None
    return min(delay, remaining - LAST_TRY)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; HTTP dates are not sent by the fabric)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def until_deadline(call: Callable[[], T], policy: RetryPolicy, deadline: float, clock: Callable[[], float],
                   sleep: Callable[[float], None],
                   on_retry: Callable[[AgentError, float], None] = lambda error, delay: None) -> T:
    """The retry loop: `call()` until it succeeds, waiting `backoff` between retryable errors. The error
    that is not retryable, or would outlast `deadline`, is raised; anything else that is not an
    `AgentError` (a bug) goes straight through. `on_retry` sees each error and wait before the sleep."""
    attempt = 0
    while True:
        try:
            return call()
        except AgentError as e:
            if not e.retryable:
                raise
            attempt = min(attempt + 1, MAX_ATTEMPT)
            delay = fit(backoff(e, attempt, policy), deadline - clock())
            if delay is None:
                raise
            on_retry(e, delay)
            sleep(delay)


# Every policy reaches its cap long before this; the counter stops here so it stays a small int.
MAX_ATTEMPT = 1 << 20
