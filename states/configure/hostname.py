"""The `hostname` configure step: the guest hostname from IMDS `compute.osProfile.computerName`.

Validated as an RFC 1123 host name that the kernel accepts (≤ 63 characters, labels of letters, digits and
hyphens, no leading/trailing hyphen, no trailing dot), then applied by `hostname.method` without ever going
through a shell. `compute.name` is used only when computerName is missing or invalid and it is itself valid
(on scale sets it looks like `vmss_1`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket

from statemachine import command, fs
from statemachine.context import Context
from statemachine.errors import HostnameError, RecoverableError
from statemachine.log import fields
from statemachine.text import clean
from states.configure import Change, Facts

log = logging.getLogger(__name__)

MAX_LENGTH = 63  # HOST_NAME_MAX is 64 including the terminating NUL
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # whole label: fullmatch


def validate(name: str) -> str | None:
    """Pure: why `name` is not a usable hostname, or None when it is."""
    if not name:
        return "empty"
    if len(name) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if not name.isascii():
        return "not ASCII"
    if name.endswith("."):
        return "ends with a dot"
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            return f"label {label!r} is not 1-63 letters, digits or inner hyphens"
    return None


def choose(facts: Facts) -> tuple[str, str]:
    """Pure: (hostname, where it came from), or RecoverableError naming what was wrong."""
    instance = facts.instance
    problems = {}
    for source, value in (("IMDS osProfile.computerName", instance.computer_name),
                          ("IMDS compute.name", instance.name)):
        if value is None:
            problems[source] = "missing"
            continue
        problem = validate(value)
        if problem is None:
            return value, source
        problems[source] = problem
    media_name = getattr(facts.media, "hostname", None)
    if isinstance(media_name, str) and validate(media_name) is None:
        return media_name, "provisioning media HostName"
    raise RecoverableError("no valid hostname in the instance metadata",
                           **{k.split()[-1]: v for k, v in problems.items()},
                           value=clean(str(instance.computer_name), 80))


def current(ctx: Context) -> str:
    if ctx.config.hostname.method == "file":
        try:
            found = fs.read_file(ctx.root, "etc/hostname", 4096)
        except (OSError, fs.Refused):
            return "unset"  # rewritten: the rename replaces whatever name is there
        return (found.data.decode("utf-8", "replace").strip() if found else "") or "unset"
    return socket.gethostname()


def plan(ctx: Context, facts: Facts) -> Change | None:
    name, source = choose(facts)
    before = current(ctx)
    if before == name:
        return None
    return Change("hostname", before or "unset", name, source)


def apply(ctx: Context, facts: Facts) -> Change | None:
    change = plan(ctx, facts)
    if change is None:
        return None
    method = _resolve_method(ctx)
    if method == "hostnamectl":
        try:
            _hostnamectl(change.after)
        except HostnameError as e:
            if ctx.config.hostname.method != "auto":
                raise
            log.warning("hostnamectl failed; setting the hostname directly", extra=fields(reason=str(e)))
            method = "sethostname"
    if method != "hostnamectl":
        _write_file(ctx, change.after)
        if method == "sethostname":
            try:
                socket.sethostname(change.after)
            except OSError as e:
                raise HostnameError("sethostname failed", hostname=change.after, error=e.strerror) from e
    log.info("hostname set", extra=fields(hostname=change.after, method=method, source=change.why))
    return change


def _resolve_method(ctx: Context) -> str:
    method = ctx.config.hostname.method
    if method != "auto":
        return method
    # A relocated root is an image being built (or a test): its /etc/hostname is ours, the running
    # system's hostname is not. Only an explicit method may touch the running system then.
    if os.path.realpath(ctx.config.paths.root) != "/":
        return "file"
    if shutil.which("hostnamectl") and os.path.isdir("/run/systemd/system"):
        return "hostnamectl"
    return "sethostname"


def _hostnamectl(name: str) -> None:
    command.run(["hostnamectl", "set-hostname", "--", name], "hostnamectl set-hostname", timeout=30,
           error=HostnameError)


def _write_file(ctx: Context, name: str) -> None:
    try:
        fs.atomic_write(ctx.root, "etc/hostname", (name + "\n").encode("ascii"))
    except OSError as e:
        raise HostnameError("writing /etc/hostname failed", hostname=name, error=e.strerror) from e
