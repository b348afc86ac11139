"""NETWORK_WAIT: wait until the WireServer accepts a TCP connection, so the unit needs no
network-online.target and the Ready follows within milliseconds of the fabric becoming reachable.

Each turn is one connect. A failure is an error whose type says how to wait (statemachine.retry). With no
route or address yet (DHCP still running, nothing sent), the probe sleeps until the kernel announces an
address or route change over rtnetlink, so the wait costs no CPU the rest of the boot needs (DHCP
included) and the next connect follows the lease at once. A refused or unanswered connect costs the host a
round trip, so it backs off with jitter. Neither retry is saved or logged: a probe is not an attempt worth
wearing the disk for. Meanwhile a background thread imports requests and lxml, so that work overlaps the
wait for DHCP instead of following it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from urllib.parse import urlsplit

from statemachine.context import Context, Outcome
from statemachine.errors import ConfigError, NoRouteError, NotListeningError
from statemachine.log import fields
from statemachine.persistence import Record

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0  # a dropped SYN: the probe gives up after this and counts as not listening
# Failures that never left the VM: no route, no usable source address yet.
LOCAL_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN})
# rtnetlink multicast groups (linux/rtnetlink.h): IPv4 and IPv6 addresses and routes added or removed.
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x10, 0x40, 0x100, 0x400
ROUTE_GROUPS = RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


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


def route_changes() -> socket.socket | None:
    """A socket that turns readable when an address or route is added or removed (a DHCP lease adds both),
    or None where the kernel or the sandbox offers none: then the probe is simply polled."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    except (OSError, AttributeError):  # AttributeError: not Linux
        return None
    try:
        sock.bind((0, ROUTE_GROUPS))
    except OSError:
        sock.close()
        return None
    return sock


def wait_for_change(changes: socket.socket, timeout: float) -> bool:
    """Block until the kernel announces a change or `timeout` seconds pass; True if woken by a change."""
    changes.settimeout(timeout)
    try:
        changes.recv(65536)
    except OSError:  # socket.timeout included
        return False
    return True


def connect(host: str, port: int, timeout: float) -> None:
    """One TCP connect, closed at once; raises the error that says how to wait before the next. Without a
    route it first waits, up to `timeout`, for the next address or route change."""
    changes = route_changes()  # subscribed before the connect, so a lease just after it still wakes the wait
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        address = f"{host}:{port}"
        if e.errno in LOCAL_ERRNOS:
            if changes is not None:
                wait_for_change(changes, timeout)
            raise NoRouteError("no route to the WireServer yet", address=address, error=e.strerror) from None
        raise NotListeningError("WireServer does not accept connections", address=address,
                                error=e.strerror or type(e).__name__) from None
    finally:
        if changes is not None:
            changes.close()


def _warm_imports() -> None:
    try:
        import lxml.etree  # noqa: F401

        import statemachine.fabric  # noqa: F401  (requests, the way the fabric clients import it)
    except Exception:  # pragma: no cover - the real import later reports any problem
        pass


_warming: threading.Thread | None = None


def warm_imports() -> None:
    """Start importing requests and lxml in the background, once per process. The runner calls this before
    the first save, so the imports also overlap that save's fsyncs, not only the network wait."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_warm_imports, name="warm-imports", daemon=True)
        _warming.start()


def step(ctx: Context, record: Record) -> Outcome:
    host, port = target(ctx.config.fabric.wireserver_url)
    warm_imports()
    try:
        (ctx.probe or connect)(host, port, max(min(CONNECT_TIMEOUT, ctx.remaining()), 0.01))
    except (NoRouteError, NotListeningError):
        if record.attempts == 0:
            log.info("waiting for the WireServer to accept connections", extra=fields(address=f"{host}:{port}"))
        raise
    log.info("WireServer reachable", extra=fields(address=f"{host}:{port}", polls=record.attempts + 1))
    return Outcome("network_up")
