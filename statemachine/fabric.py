"""Thin HTTP clients for the WireServer and IMDS: bytes in, bytes out, no parsing, no loops.

The only module that imports `requests`. Every call has a hard overall deadline (a server trickling a byte
a second cannot hold us past `timeout`), a body-size cap, and proxies disabled (`trust_env = False`: both
Azure endpoints must bypass any proxy).
Failures become `FabricError`, retryable or not by the status code tables below, decided once when it is
raised; the runner's retry loop decides what to do with them. Its `detail` is a short cause in our words
("connection refused", "timed out after 30 s", "HTTP 503 Service Unavailable"), never a library's repr.
"""

from __future__ import annotations

import errno
import http.client
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from types import FrameType
from typing import Any, Callable

import requests
import urllib3.exceptions

from statemachine import AGENT_NAME, __version__
from statemachine.errors import FabricError, GoneError, ThrottledError
from statemachine.health import JSON_HEADERS, XML_HEADERS
from statemachine.retry import parse_retry_after
from statemachine.text import clean

WIRESERVER_VERSION = "2012-11-30"
MAX_BODY = 4 << 20  # goal states and IMDS documents are a few KiB
RETRY_CODES = frozenset({408, 429, 500, 502, 503, 504})
IMDS_RETRY_CODES = RETRY_CODES | {404, 410}  # IMDS answers these while the VM is still being set up


def new_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never a proxy, never ~/.netrc: the fabric is link-local
    return session


class _DeadlinePassed(BaseException):
    """Raised by SIGALRM inside a blocked socket call; a BaseException so no library code swallows it."""


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt whatever blocks the main thread after `seconds`. Socket timeouts bound each recv, not a
    whole call: a server trickling its status line a byte at a time would hold us for hours."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; the agent's calls all run there
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _DeadlinePassed()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


MIN_CALL = 0.05  # the shortest call worth making when a phase's budget is nearly spent


class Http:
    """One request with an overall deadline and a size cap.

    The deadline is `timeout`, shortened to what is left of the caller's budget (`remaining`), so a call
    started near the end of a phase cannot carry it past its budget by a whole `timeout`."""

    def __init__(self, session: requests.Session, timeout: float, max_body: int = MAX_BODY,
                 remaining: Callable[[], float] | None = None) -> None:
        self.session = session
        self.timeout = timeout
        self.max_body = max_body
        self.remaining = remaining

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None,
                endpoint: str = "", read_body: bool = True) -> tuple[int, Mapping[str, str], bytes]:
        """`read_body=False`: the status line and headers are the whole answer (the health POSTs), so a
        broken or endless body after a 200 cannot turn an accepted report into a failure."""
        timeout = self.timeout
        if self.remaining is not None:
            timeout = max(min(timeout, self.remaining()), MIN_CALL)
        try:
            with _alarm(timeout + 0.1):  # a backstop: the socket timeouts and _read's checks come first
                return self._request(method, url, headers, body, endpoint, timeout, read_body)
        except _DeadlinePassed:
            raise FabricError("fabric answer exceeded the per-call deadline", retryable=True,
                              endpoint=endpoint, timeout=round(timeout, 3)) from None

    def _request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                 endpoint: str, timeout: float, read_body: bool) -> tuple[int, Mapping[str, str], bytes]:
        deadline = time.monotonic() + timeout
        try:
            resp = self.session.request(method, url, headers=dict(headers), data=body, stream=True,
                                        timeout=(timeout, timeout), allow_redirects=False)
        except requests.RequestException as e:
            raise FabricError("request to the fabric failed", retryable=True, detail=transport_cause(e, timeout),
                              endpoint=endpoint, error=type(e).__name__) from e
        try:
            data = self._read(resp, deadline, endpoint) if read_body else b""
        finally:
            resp.close()
        return resp.status_code, resp.headers, data

    def _read(self, resp: requests.Response, deadline: float, endpoint: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        raw: Any = resp.raw
        reader = getattr(raw, "read1", None) or raw.read  # read1: one recv, so the deadline is checked often
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FabricError("fabric answer exceeded the per-call deadline", retryable=True,
                                      endpoint=endpoint, timeout=self.timeout)
                _set_socket_timeout(raw, remaining)
                chunk = reader(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > self.max_body:
                    raise FabricError("fabric answer is too large", retryable=True, endpoint=endpoint,
                                      limit=self.max_body)
                chunks.append(chunk)
        except FabricError:
            raise
        except Exception as e:  # requests', urllib3's (ProtocolError & co. share no base) and OSError
            if not isinstance(e, (requests.RequestException, OSError, ValueError)) and \
                    not type(e).__module__.startswith("urllib3"):
                raise
            if time.monotonic() >= deadline - 0.01:  # the socket timeout we shrank to the deadline fired
                raise FabricError("fabric answer exceeded the per-call deadline", retryable=True,
                                  endpoint=endpoint, timeout=self.timeout) from e
            raise FabricError("reading the fabric answer failed", retryable=True,
                              detail=transport_cause(e, self.timeout), endpoint=endpoint,
                              error=type(e).__name__) from e


# What the errno of a failed connect or transfer means, in the words an operator searches for.
_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed while sending",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network is down",
    errno.EHOSTDOWN: "host is down",
    errno.EADDRNOTAVAIL: "no local address",
    errno.ETIMEDOUT: "connection timed out",
}
_CHAIN_LIMIT = 16  # exceptions looked at: a chain is a handful deep; a cycle or a freak must not loop


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps, outermost first: __cause__, __context__, exceptions among its args, and
    urllib3's `reason` (MaxRetryError keeps the real failure there)."""
    seen: list[BaseException] = []
    queue: list[BaseException] = [error]
    while queue and len(seen) < _CHAIN_LIMIT:
        current = queue.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        queue += [e for e in inner if isinstance(e, BaseException)]
    return seen


def _seconds(value: float) -> str:
    return f"{round(value, 2):g}"


def transport_cause(error: BaseException, timeout: float) -> str:
    """A short phrase for why a request failed below HTTP: the innermost errno's meaning, or a timeout with
    the call's `timeout`, or a closed connection; the innermost exception's own text (cut short) only when
    nothing better is known. Pure."""
    chain = _chain(error)
    for e in reversed(chain):  # innermost first: the errno the kernel gave
        # errno and strerror are whatever the raiser passed: only an int errno is the kernel's
        words = clean(e.strerror, 60).lower() if isinstance(e, OSError) and isinstance(e.strerror, str) else ""
        if isinstance(e, socket.gaierror):
            return "name resolution failed" + (f" ({words})" if words else "")
        if isinstance(e, ssl.SSLError):
            return "TLS failed" + (f": {clean(str(e.reason), 60)}" if e.reason else "")
        if isinstance(e, OSError) and isinstance(e.errno, int) and not isinstance(e, requests.RequestException):
            if e.errno in _ERRNO_CAUSES:
                return _ERRNO_CAUSES[e.errno]
            return f"{words or 'error'} ({errno.errorcode.get(e.errno, e.errno)})"
    # urllib3 makes a failed connect (NewConnectionError) a kind of ConnectTimeoutError: its errno said more
    timeouts = [e for e in chain if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
                and not isinstance(e, urllib3.exceptions.NewConnectionError)]
    if any(isinstance(e, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)) for e in timeouts):
        return f"connect timed out after {_seconds(timeout)} s"
    if timeouts:
        return f"timed out after {_seconds(timeout)} s"
    for e in reversed(chain):
        if isinstance(e, http.client.RemoteDisconnected):
            return "connection closed without an answer"
        if isinstance(e, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
            return "answer cut short"
        if isinstance(e, http.client.HTTPException):
            return "answer is not HTTP"
    innermost = chain[-1]
    return clean(str(innermost), 80) or type(innermost).__name__


def http_cause(status: int) -> str:
    """`HTTP 503 Service Unavailable`; the number alone for a status without a standard phrase."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _set_socket_timeout(raw: Any, remaining: float) -> None:
    """Shrink the socket's timeout to what is left of the call's deadline, where urllib3 lets us see it."""
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.settimeout(max(remaining, 0.001))
        except OSError:
            pass


def check_status(status: int, headers: Mapping[str, str], endpoint: str, retry_codes: frozenset[int]) -> None:
    if status == 200:
        return
    retry_after = parse_retry_after(headers.get("Retry-After"))
    kind = ThrottledError if status == 429 else FabricError
    raise kind("fabric answered with an error status", retryable=status in retry_codes,
               retry_after=retry_after, detail=http_cause(status), endpoint=endpoint, status=status)


class WireServer:
    def __init__(self, http: Http, base_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.headers = {"x-ms-version": WIRESERVER_VERSION, "x-ms-agent-name": AGENT_NAME,
                        "User-Agent": f"{AGENT_NAME}/{__version__}"}

    def get_goal_state(self) -> bytes:
        status, headers, body = self.http.request("GET", f"{self.base_url}/machine/?comp=goalstate",
                                                  self.headers, endpoint="goalstate")
        check_status(status, headers, "goalstate", RETRY_CODES)
        return body

    def post_health(self, body: bytes) -> None:
        headers = {**self.headers, **XML_HEADERS}
        # A 200 is the WireServer taking the report; what follows it must not make us post it twice.
        status, answer_headers, _ = self.http.request("POST", f"{self.base_url}/machine?comp=health", headers,
                                                      body, endpoint="health", read_body=False)
        if status == 410:
            raise GoneError("health report refers to a stale goal state", endpoint="health", status=410)
        check_status(status, answer_headers, "health", RETRY_CODES)

    def post_provisioning_health(self, body: bytes) -> None:
        """azure-init's JSON endpoint; the same retry rules as the XML one."""
        headers = {**self.headers, **JSON_HEADERS}
        status, answer_headers, _ = self.http.request("POST", f"{self.base_url}/provisioning/health", headers,
                                                      body, endpoint="provisioning_health", read_body=False)
        if status == 410:
            raise GoneError("health report refers to a stale goal state", endpoint="provisioning_health",
                            status=410)
        check_status(status, answer_headers, "provisioning_health", RETRY_CODES)


class Imds:
    API_VERSION = "2021-08-01"

    def __init__(self, http: Http, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    def get_instance(self) -> bytes:
        url = f"{self.base_url}/metadata/instance?api-version={self.API_VERSION}&extended=true"
        status, headers, body = self.http.request("GET", url, {"Metadata": "true"}, endpoint="imds")
        check_status(status, headers, "imds", IMDS_RETRY_CODES)
        return body
