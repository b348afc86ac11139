"""One error hierarchy for the whole agent.

Every failure azprov knows about is an `AgentError` with a constant, grep-able `reason` and a dict of
`supporting_data`. The pair feeds the log line, the record's `last_error`, the ProvisioningFailed description
and `azprov --status`, so an operator sees the same words everywhere. Foreign exceptions (requests, lxml,
OSError) are wrapped where they enter; only `cli.main` maps errors to exit codes.
"""

from __future__ import annotations

from typing import Any

EX_USAGE = 64
EX_CONFIG = 78


class AgentError(Exception):
    """Base of every error azprov raises on purpose."""

    retryable = False
    exit_code = 1

    def __init__(self, reason: str, **supporting_data: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.supporting_data: dict[str, Any] = supporting_data

    def __str__(self) -> str:
        if not self.supporting_data:
            return self.reason
        details = ", ".join(f"{k}={v}" for k, v in sorted(self.supporting_data.items()))
        return f"{self.reason} ({details})"

    def as_dict(self) -> dict[str, Any]:
        """The JSON-safe form kept in the record's `last_error`."""
        return {"reason": self.reason, "data": {k: _jsonable(v) for k, v in self.supporting_data.items()}}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class ConfigError(AgentError):
    """The configuration cannot be used: unknown key, wrong type, unreadable or malformed file."""

    exit_code = EX_CONFIG


class FabricError(AgentError):
    """The WireServer or IMDS did not give a usable answer (transport failure or HTTP status)."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None, **data: Any) -> None:
        super().__init__(reason, **data)
        self.retryable = retryable
        self.retry_after = retry_after


class GoneError(FabricError):
    """HTTP 410 on the health POST: the goal state changed under us; refetch it and post again."""

    def __init__(self, reason: str, **data: Any) -> None:
        super().__init__(reason, retryable=True, **data)


class GoalStateError(AgentError):
    """The WireServer answered with a document we do not understand."""


class IncompleteGoalStateError(GoalStateError):
    """The goal state lacks its RoleInstance: the fabric is still preparing it, so try again."""

    retryable = True


class MetadataError(AgentError):
    """The IMDS document is unusable (not JSON, wrong types, missing fields)."""


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

    exit_code = 75  # EX_TEMPFAIL


class BudgetExhausted(AgentError):
    """A phase kept failing with retryable errors until its time budget ran out."""


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived: persist and exit. A BaseException so no `except AgentError` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
        self.logged = False  # the runner logs where it was; cli.run logs the rest (e.g. waiting on the lock)


class RecoverableError(AgentError):
    """A configure step could not do all of its work, but the VM is usable: recorded, reported by
    `--status` (exit 2), and provisioning goes on."""


class KvpError(AgentError):
    """A KVP record cannot be encoded or the pool cannot be locked. KVP is telemetry: never fatal."""
