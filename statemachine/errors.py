"""One error hierarchy for the whole agent.

Every failure azprov knows about is an `AgentError` with a constant, grep-able `reason` and a dict of
`supporting_data`. The pair feeds the log line, the record's `last_error`, the ProvisioningFailed description
and `azprov --status`, so an operator sees the same words everywhere. Foreign exceptions (requests, lxml,
OSError) are wrapped where they enter; only `cli` maps errors to exit codes.
"""

from __future__ import annotations

from typing import Any

# The exit codes that are not "provisioning failed" (1); `cli` maps errors to them.
EX_USAGE = 64
EX_TEMPFAIL = 75
EX_CONFIG = 78


class AgentError(Exception):
    """Base of every error azprov raises on purpose. How the one retry loop (`retry.until_deadline`) treats
    it is decided by its type, never changed after it is raised:
    `retryable`: worth another try within the phase's budget;
    `pace`: the backoff to use (`retry.PACES`); empty: the phase's own;
    `at_once`: this many first retries go without a wait;
    `retry_after`: the server asked for at least this many seconds;
    `recorded`: a retry is logged and saved in the record (a network probe is not worth either)."""

    retryable = False
    pace = ""
    at_once = 0
    retry_after: float | None = None
    recorded = True

    def __init__(self, reason: str, **supporting_data: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.supporting_data: dict[str, Any] = supporting_data

    def __str__(self) -> str:
        """`reason: detail (key=value, ...)`: our words, then the cause, then the rest."""
        data = dict(self.supporting_data)
        head = self.reason + (f": {data.pop('detail')}" if data.get("detail") not in (None, "") else "")
        if not data:
            return head
        details = ", ".join(f"{k}={v}" for k, v in sorted(data.items()))
        return f"{head} ({details})"

    def as_dict(self) -> dict[str, Any]:
        """The JSON-safe form kept in the record's `last_error`."""
        return {"reason": self.reason, "data": {k: _jsonable(v) for k, v in self.supporting_data.items()}}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class ConfigError(AgentError):
    """The configuration cannot be used: unknown key, wrong type, unreadable or malformed file.

    Reads like a compiler's message, where the mistake is first:
    `/etc/azprov/azprov.toml:12: fabric.network_timeout: configuration value has the wrong type (expected a
    float, got a string)`. `expected` and `got` are TOML's type words."""

    @classmethod
    def from_dict(cls, entry: Any) -> ConfigError:
        """Back from `as_dict` (as `--status --json` carries it), to be shown the same way."""
        data = entry.get("data") if isinstance(entry, dict) else None
        reason = entry.get("reason") if isinstance(entry, dict) else None
        error = cls(str(reason or "configuration error"))
        error.supporting_data = {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}
        return error

    def __str__(self) -> str:
        data = dict(self.supporting_data)
        file, line, key = (data.pop(k, None) for k in ("file", "line", "key"))
        place = f"{file}:{line}" if file and line else file
        where = ": ".join(str(part) for part in (place, key) if part)
        said = []
        if "expected" in data or "got" in data:
            said.append(f"expected {_article(data.pop('expected', '?'))}, got {_article(data.pop('got', '?'))}")
        if "problem" in data:
            said.append((f"got {_toml(data.pop('value'))}: " if "value" in data else "") + str(data.pop("problem")))
        if "error" in data:  # the parser's or the system's own words
            said.append(str(data.pop("error")))
        said += [f"{k}={v}" for k, v in sorted(data.items())]
        return (f"{where}: " if where else "") + self.reason + (f" ({'; '.join(said)})" if said else "")


def _article(word: object) -> str:
    text = str(word)
    return ("an " if text[:1] in ("a", "e", "i", "o", "u") else "a ") + text


def _toml(value: object) -> str:
    """A value as TOML writes it: a string quoted, an array in brackets, a boolean in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class FabricError(AgentError):
    """The WireServer or IMDS did not give a usable answer (transport failure or HTTP status)."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None, **data: Any) -> None:
        super().__init__(reason, **data)
        self.retryable = retryable  # from the status code or transport failure, once, here
        self.retry_after = retry_after


class ThrottledError(FabricError):
    """HTTP 429: too many requests. Without a Retry-After the wait is wide and jittered (`retry.THROTTLED`):
    a throttled service is usually throttling many VMs at once, and only spreading their retries over
    seconds keeps it from being asked again faster than it can answer."""

    pace = "throttled"


class GoneError(FabricError):
    """HTTP 410 on the health POST: the goal state changed under us; refetch it and post again at once
    (a few times, then at the phase's pace)."""

    at_once = 5

    def __init__(self, reason: str, **data: Any) -> None:
        super().__init__(reason, retryable=True, **data)


class NoRouteError(AgentError):
    """A connect to the WireServer failed locally (no route or address yet: DHCP has not finished). Nothing
    was sent, so retrying at once after the next route change costs the fabric nothing and Ready follows
    the lease at once."""

    retryable = True
    pace = "no_route"
    recorded = False


class NotListeningError(AgentError):
    """The WireServer refused or did not answer a connect: a round trip to the host each time, so back off."""

    retryable = True
    pace = "connect"
    recorded = False


class GoalStateError(AgentError):
    """The WireServer answered with a document we do not understand. Retryable: a truncated answer or an
    intermediary's error page says nothing lasting about the WireServer, and failing at once would lose the
    VM to one glitch; the phase's budget decides."""

    retryable = True


class IncompleteGoalStateError(GoalStateError):
    """The goal state lacks its RoleInstance: the fabric is still preparing it, so try again."""


class MetadataError(AgentError):
    """The IMDS document is unusable (wrong types, missing fields)."""


class UnreadableMetadataError(MetadataError):
    """The IMDS answer is not JSON at all (truncated, an error page): IMDS may answer properly next time."""

    retryable = True


class HostnameError(AgentError):
    """The hostname from IMDS is invalid, or setting it failed."""


class ConfigureError(AgentError):
    """A local change on the VM failed."""


class MediaError(AgentError):
    """The provisioning media (the ovf-env.xml CD) cannot be mounted or read, or its document is invalid."""


class StateFileError(AgentError):
    """The persisted record is unreadable, of an unknown schema, or not safe to use."""


class LockError(AgentError):
    """Another azprov run holds the lock."""


class BudgetExhausted(AgentError):
    """A phase kept failing with retryable errors until its time budget ran out."""


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived: persist and exit. A BaseException so no `except AgentError` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
        self.logged = False  # the runner logs where it was when it knows; otherwise whoever catches it


class RecoverableError(AgentError):
    """A configure step could not do all of its work, but the VM is usable: recorded, reported by
    `--status` (exit 2), and provisioning goes on."""


class KvpError(AgentError):
    """A KVP record cannot be encoded or the pool cannot be locked. KVP is telemetry: never fatal."""
