"""The one way azprov starts a tool (useradd, usermod, chpasswd, visudo, hostnamectl, mount).

An argv list, never a shell; stdin is the given bytes or nothing; a bounded time. Failures become our own
error type, naming the tool and the end of its stderr (where tools say why), cut by `text.clean`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from statemachine.errors import AgentError, ConfigureError
from statemachine.text import clean


def run(argv: Sequence[str], what: str, stdin: bytes | None = None, timeout: float = 60,
        error: type[AgentError] = ConfigureError, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`. With `check`, a non-zero exit raises `error`; a tool that cannot start always does."""
    try:
        done = subprocess.run(list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise error(f"{what} cannot be run", command=argv[0], error=clean(str(e), 200)) from e
    if check and done.returncode != 0:
        raise error(f"{what} failed", command=argv[0], rc=done.returncode,
                    stderr=clean(done.stderr.decode("utf-8", "replace").strip(), 200))
    return done
