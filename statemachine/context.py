"""What a step is handed: the run's dependencies (`Context`) and what the run has learnt so far (`RunState`).

`Context` holds the configuration, the clients that reach the outside world, the clock, the sleep and the
connect probe: chosen once by the composition root (tests inject fakes or point the URLs at the loopback
fake fabric) and never replaced during a run. Clients are built on first use, so a run that has nothing to
do never imports `requests` or `lxml`. `RunState` is the memory of one run, never persisted: the budget's
deadline (set only by the runner's retry loop) and what the states read once and reuse.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from statemachine.config import Config
from statemachine.errors import MediaError

if TYPE_CHECKING:  # the states' own types, for the annotations only: statemachine never imports states
    from statemachine.fabric import Http
    from statemachine.kvp import Telemetry
    from states.configure import Facts
    from states.goalstate import GoalState


class WireServerClient(Protocol):
    def get_goal_state(self) -> bytes: ...
    def post_health(self, body: bytes) -> None: ...
    def post_provisioning_health(self, body: bytes) -> None: ...


class ImdsClient(Protocol):
    def get_instance(self) -> bytes: ...


# Connect to (host, port) within the timeout and close at once; raise NoRouteError or NotListeningError.
Probe = Callable[[str, int, float], None]


class Outcome(NamedTuple):
    """What a step achieved: the event to fire (None: progress within the phase) and record updates."""

    event: str | None
    updates: Mapping[str, Any] = MappingProxyType({})  # shared default: read-only


class RunState:
    """One run's memory. A plain class: a dataclass would cost its code generation at every boot."""

    __slots__ = ("deadline", "goal_state", "facts", "media_problem", "media_handled")

    def __init__(self) -> None:
        self.deadline = float("inf")  # monotonic end of the current budget: runner.within_budget sets it
        self.goal_state: tuple[float, GoalState] | None = None  # (clock, goal state) last fetched
        # What CONFIGURING read once: the IMDS document and media (which can carry a password, so never
        # saved), the media's problem if it was unusable, and whether CustomData and that were handled.
        self.facts: Facts | None = None
        self.media_problem: MediaError | None = None
        self.media_handled = False


class Context:
    __slots__ = ("config", "clock", "sleep", "probe", "run", "_wireserver", "_imds", "_telemetry", "_http")

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, probe: Probe | None = None,
                 wireserver: WireServerClient | None = None, imds: ImdsClient | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.probe = probe  # None: a real TCP connect (states.network_wait.connect)
        self.run = RunState()
        self._wireserver = wireserver
        self._imds = imds
        self._telemetry = telemetry
        self._http: Http | None = None

    def __repr__(self) -> str:
        return f"Context(deadline={self.run.deadline!r})"

    @property
    def root(self) -> Path:
        return Path(self.config.paths.root)

    def root_path(self, absolute: str) -> Path:
        """`/etc/hostname` under `paths.root`: every file azprov changes goes through here."""
        return self.root / absolute.lstrip("/")

    def remaining(self) -> float:
        return self.run.deadline - self.clock()

    def events(self) -> Telemetry:
        """KVP telemetry; a no-op when `kvp.enabled` is false. The pool file lives under `paths.root`."""
        if self._telemetry is None:
            from statemachine.kvp import KvpPool, Telemetry

            kvp = self.config.kvp
            self._telemetry = Telemetry(KvpPool(self.root_path(kvp.pool_path), root=self.root) if kvp.enabled else None)
        return self._telemetry

    def wire(self) -> WireServerClient:
        if self._wireserver is None:
            from statemachine import fabric  # imports requests: only when the fabric is really needed

            self._wireserver = fabric.WireServer(self._get_http(), self.config.fabric.wireserver_url)
        return self._wireserver

    def metadata(self) -> ImdsClient:
        if self._imds is None:
            from statemachine import fabric

            self._imds = fabric.Imds(self._get_http(), self.config.fabric.imds_url)
        return self._imds

    def _get_http(self) -> Http:
        if self._http is None:
            from statemachine import fabric

            self._http = fabric.Http(fabric.new_session(), self.config.fabric.request_timeout,
                                     remaining=self.remaining)
        return self._http
