"""What a step is handed: the configuration, the clients that reach the outside world, and the clock.

Clients are built on first use, so a run that has nothing to do never imports `requests` or `lxml`.
Tests inject fakes (or point the URLs at the loopback fake fabric) instead of patching modules.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Protocol

from statemachine.config import Config
from statemachine.errors import AgentError
from statemachine.telemetry import Telemetry


class WireServerClient(Protocol):
    def get_goal_state(self) -> bytes: ...
    def post_health(self, body: bytes) -> None: ...
    def post_provisioning_health(self, body: bytes) -> None: ...


class ImdsClient(Protocol):
    def get_instance(self) -> bytes: ...


def tcp_probe(host: str, port: int, timeout: float) -> bool:
    """Does something accept a TCP connection there? Cheap: one SYN, closed at once."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Outcome(NamedTuple):
    """What a step achieved: the event to fire (None: progress within the phase) and record updates."""

    event: str | None
    updates: Mapping[str, Any] = MappingProxyType({})  # shared default: read-only


class Context:
    """Mutable per-run state, so a plain class (a dataclass would cost its code generation at every boot)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 probe: Callable[[str, int, float], bool] = tcp_probe, dry_run: bool = False,
                 wireserver: WireServerClient | None = None, imds: ImdsClient | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.probe = probe
        self.dry_run = dry_run
        # Set by the runner before each step: the monotonic time at which the current phase's budget ends.
        self.deadline = float("inf")
        self.wireserver = wireserver
        self.imds = imds
        self.telemetry = telemetry
        # (clock, goal state) of the last goal state this process fetched: states.goalstate.take_fresh().
        self.last_goal_state: tuple[float, Any] | None = None
        # What CONFIGURING read once this run and keeps in memory only (the media can carry a password):
        # states.configure.Facts, the media's problem if it was unusable, and whether CustomData/that problem
        # were already handled this run. Typed loosely: statemachine never imports states.
        self.facts: Any = None
        self.media_problem: AgentError | None = None
        self.media_handled = False
        self._http: Any = None

    def __repr__(self) -> str:
        return f"Context(dry_run={self.dry_run!r}, deadline={self.deadline!r})"

    @property
    def root(self) -> Path:
        return Path(self.config.paths.root)

    def root_path(self, absolute: str) -> Path:
        """`/etc/hostname` under `paths.root`: every file azprov changes goes through here."""
        return self.root / absolute.lstrip("/")

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def events(self) -> Telemetry:
        """KVP telemetry; a no-op when `kvp.enabled` is false. The pool file lives under `paths.root`."""
        if self.telemetry is None:
            from statemachine.kvp import KvpPool

            kvp = self.config.kvp
            self.telemetry = Telemetry(KvpPool(self.root_path(kvp.pool_path), root=self.root) if kvp.enabled else None)
        return self.telemetry

    def wire(self) -> WireServerClient:
        if self.wireserver is None:
            from statemachine import fabric  # imports requests: only when the fabric is really needed

            self.wireserver = fabric.WireServer(self._get_http(), self.config.fabric.wireserver_url)
        return self.wireserver

    def metadata(self) -> ImdsClient:
        if self.imds is None:
            from statemachine import fabric

            self.imds = fabric.Imds(self._get_http(), self.config.fabric.imds_url)
        return self.imds

    def _get_http(self) -> Any:
        if self._http is None:
            from statemachine import fabric

            self._http = fabric.Http(fabric.new_session(), self.config.fabric.request_timeout,
                                     remaining=self.remaining)
        return self._http
