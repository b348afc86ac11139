"""NETWORK_WAIT: wait until the WireServer accepts a TCP connection, so the unit needs no
network-online.target and the Ready follows within milliseconds of the fabric becoming reachable.

Polling is fast and cheap (a refused or unroutable connect fails at once; a dropped SYN is bounded by a
one-second connect timeout). Meanwhile a background thread imports requests and lxml, so the interpreter
work overlaps with DHCP instead of following it. This step loops by itself rather than through the runner's
retry policy: a probe is not a failed attempt worth persisting, and a record written fifty times a second
for five minutes would only wear the disk.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from statemachine.context import Context, Outcome
from statemachine.errors import BudgetExhausted, ConfigError
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.retry import capped_exponential

log = logging.getLogger(__name__)

# A refused or unroutable probe costs ~50 us of CPU, so polling every 5 ms is ~1% of one core while DHCP
# runs, and it bounds the wait after the fabric starts listening to 5 ms instead of 20 (bench P1).
FIRST_POLL = 0.002
MAX_POLL = 0.005
CONNECT_TIMEOUT = 1.0


def target(url: str) -> tuple[str, int]:
    """Pure: host and port of the WireServer URL."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError("configuration value is invalid", key="fabric.wireserver_url", problem=str(e)) from e
    if not parts.hostname:
        raise ConfigError("configuration value is invalid", key="fabric.wireserver_url", problem="no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def poll_delay(attempt: int) -> float:
    return capped_exponential(FIRST_POLL, 1.5, MAX_POLL, attempt)


def _warm_imports() -> None:
    try:
        import lxml.etree  # noqa: F401

        import statemachine.fabric  # noqa: F401  (requests, the way the fabric clients import it)
    except Exception:  # pragma: no cover - the real import later reports any problem
        pass


_warming: threading.Thread | None = None


def warm_imports() -> None:
    """Start importing requests and lxml in the background, once per process. The runner's driver calls
    this before the first save, so the imports also overlap that save's fsyncs, not only the network wait."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_warm_imports, name="warm-imports", daemon=True)
        _warming.start()


def step(ctx: Context, record: Record) -> Outcome:
    host, port = target(ctx.config.fabric.wireserver_url)
    warm_imports()
    started = ctx.clock()
    attempt = 0
    while True:
        remaining = ctx.remaining()
        if ctx.probe(host, port, max(min(CONNECT_TIMEOUT, remaining), 0.01)):
            log.info("WireServer reachable", extra=fields(address=f"{host}:{port}", polls=attempt + 1,
                                                          waited_s=round(ctx.clock() - started, 3)))
            return Outcome("network_up")
        if attempt == 0:
            log.info("waiting for the WireServer to accept connections", extra=fields(address=f"{host}:{port}"))
        remaining = ctx.remaining()
        if remaining <= 0:
            raise BudgetExhausted("WireServer did not accept a connection within fabric.network_timeout",
                                  address=f"{host}:{port}", budget_s=ctx.config.fabric.network_timeout)
        ctx.sleep(min(poll_delay(attempt), remaining))
        attempt += 1
