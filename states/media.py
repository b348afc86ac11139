"""The provisioning media: the small CD Azure attaches with `ovf-env.xml`, read once and parsed.

Owns two things. `parse_ovf_env(bytes) -> OvfEnv` is pure and namespace-aware: elements are matched by
(namespace, local name), so any prefix works (`wa:`, `ns1:`, a default namespace) but a look-alike from
another namespace does not. The parser resolves no entities, loads no DTD, touches no network and caps the
document size (states/xmlutil.py). `read_ovf_env(device, ...)` is the I/O edge: it finds the media already
mounted (via /proc/self/mounts) or mounts it read-only into a private temporary directory, trying udf then
iso9660, copies the file out and unmounts; all through argv lists, never a shell.

The password is kept out of `repr()` and never logged; CustomData is only decoded here, never executed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NamedTuple

from lxml import etree

from statemachine import command, fs
from statemachine.errors import MediaError
from statemachine.log import fields
from statemachine.text import clean, parse_bool
from states import xmlutil

log = logging.getLogger(__name__)

OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
FILENAME = "ovf-env.xml"
WHAT = "ovf-env.xml"
MAX_FILE = xmlutil.MAX_DOCUMENT
MAX_VALUE = 128 << 10  # CustomData is at most 64 KiB once decoded; its base64 form fits in this
FSTYPES = ("udf", "iso9660")


class MediaKey(NamedTuple):
    fingerprint: str
    path: str | None
    value: str


# A dataclass, unlike the other records: its repr must hide the password and CustomData (a NamedTuple's shows
# every field), and it is defined only when the media is enabled.
@dataclasses.dataclass(frozen=True)
class OvfEnv:
    hostname: str
    username: str
    password: str | None = dataclasses.field(default=None, repr=False)
    custom_data: bytes | None = dataclasses.field(default=None, repr=False)
    disable_ssh_password_auth: bool | None = None
    public_keys: tuple[MediaKey, ...] = ()
    # Things that were odd but not fatal (CustomData that is not base64, say), for the step to record.
    notes: tuple[str, ...] = ()


# ---- pure parsing ---------------------------------------------------------------------------------------

def _is(element: etree._Element, ns: str, name: str) -> bool:
    return xmlutil.is_(element, name, ns)


def _children(element: etree._Element, name: str, ns: str = WA_NS) -> list[etree._Element]:
    return list(xmlutil.children(element, name, ns))


def _one(element: etree._Element, name: str, required: bool = True) -> etree._Element | None:
    return xmlutil.only_child(element, name, WHAT, MediaError, required=required, ns=WA_NS)


def _text(element: etree._Element, name: str, required: bool = False) -> str | None:
    """The stripped text of the one child `name`; None when absent or empty (unless required)."""
    return xmlutil.optional_text(element, name, WHAT, MediaError, ns=WA_NS, limit=MAX_VALUE, required=required)


def _bool(value: str | None, name: str) -> bool | None:
    try:
        return parse_bool(value)
    except ValueError:
        raise MediaError('ovf-env.xml value is not "true" or "false"', element=name,
                         value=clean(value or "", 32)) from None


def _custom_data(value: str | None) -> tuple[bytes | None, tuple[str, ...]]:
    if value is None:
        return None, ()
    try:
        return base64.b64decode("".join(value.split()), validate=True), ()
    except (binascii.Error, ValueError):
        # The platform always base64-encodes it; keep what we got rather than lose the user's data.
        return value.encode("utf-8"), ("CustomData is not base64; kept as given",)


def _keys(config_set: etree._Element) -> tuple[MediaKey, ...]:
    ssh = _one(config_set, "SSH", required=False)
    if ssh is None:
        return ()
    container = _one(ssh, "PublicKeys", required=False)
    if container is None:
        return ()
    keys = []
    for item in _children(container, "PublicKey"):
        keys.append(MediaKey(fingerprint=_text(item, "Fingerprint") or "", path=_text(item, "Path"),
                             value=_text(item, "Value") or ""))
    return tuple(keys)


def parse_ovf_env(body: bytes) -> OvfEnv:
    """Pure: the provisioning settings in an ovf-env.xml document. Raises only MediaError."""
    root = xmlutil.parse(body, "ovf-env.xml", MediaError)
    if not _is(root, OVF_NS, "Environment"):
        raise MediaError("ovf-env.xml root is not an OVF Environment", root=clean(str(root.tag), 80))
    sections = _children(root, "ProvisioningSection")
    if not sections:
        raise MediaError("ovf-env.xml has no Azure ProvisioningSection (not Azure provisioning media)")
    if len(sections) > 1:
        raise MediaError("ovf-env.xml has a duplicate element", element="ProvisioningSection")
    config_set = _one(sections[0], "LinuxProvisioningConfigurationSet")
    assert config_set is not None
    set_type = _text(config_set, "ConfigurationSetType")
    if set_type not in (None, "LinuxProvisioningConfiguration"):
        raise MediaError("ovf-env.xml has an unexpected ConfigurationSetType", value=clean(set_type or "", 64))
    hostname = _text(config_set, "HostName", required=True)
    username = _text(config_set, "UserName", required=True)
    assert hostname is not None and username is not None
    custom_data, notes = _custom_data(_text(config_set, "CustomData"))
    return OvfEnv(
        hostname=hostname,
        username=username,
        password=_text(config_set, "UserPassword"),
        custom_data=custom_data,
        disable_ssh_password_auth=_bool(_text(config_set, "DisableSshPasswordAuthentication"),
                                        "DisableSshPasswordAuthentication"),
        public_keys=_keys(config_set),
        notes=notes,
    )


# ---- finding and mounting the media ---------------------------------------------------------------------

def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and all(c in "01234567" for c in field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_mount(mounts: str, device: str) -> str | None:
    """Pure: where `device` (already resolved, e.g. /dev/sr0) is mounted according to a mounts table."""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 2 and _unescape(parts[0]) == device:
            return _unescape(parts[1])
    return None


def _read_file(directory: Path, name: str) -> bytes | None:
    """The file's bytes, size-capped, never through a symlink; None when the media does not have it."""
    path = str(directory / name)
    try:
        found = fs.read_file(directory, name, MAX_FILE)
    except fs.Refused as e:
        if "limit" in e.supporting_data:
            raise MediaError("ovf-env.xml on the media is too large", limit=MAX_FILE) from e
        found_there = str(e.supporting_data.get("found"))
        if found_there.startswith("a symlink"):
            raise MediaError("ovf-env.xml on the media is unreadable", path=path, found=found_there) from e
        raise MediaError("ovf-env.xml on the media is not a regular file", path=path, found=found_there) from e
    except OSError as e:
        raise MediaError("ovf-env.xml on the media is unreadable", path=path,
                         error=e.strerror or errno.errorcode.get(e.errno or 0, "?")) from e
    return None if found is None else found.data


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[bytes]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return command.run(argv, argv[0], error=MediaError, check=False)


def _mount(device: str, target: str, fstypes: Sequence[str], run: Runner) -> str:
    failures = []
    for fstype in fstypes:
        try:
            done = run(["mount", "-o", "ro,nosuid,nodev,noexec", "-t", fstype, "--", device, target])
        except (OSError, subprocess.SubprocessError) as e:
            raise MediaError("mount cannot be run", error=clean(str(e), 200)) from e
        if done.returncode == 0:
            return fstype
        failures.append(f"{fstype}: {clean(done.stderr.decode('utf-8', 'replace').strip(), 120)}")
    raise MediaError("provisioning media cannot be mounted", device=device, tried="; ".join(failures))


def read_ovf_env(device: str = "/dev/sr0", filename: str = FILENAME, *, fstypes: Sequence[str] = FSTYPES,
                 mounts_file: Path = Path("/proc/self/mounts"), run: Runner = _run) -> bytes | None:
    """The raw ovf-env.xml from the provisioning media, or None when there is no media or no such file.

    `device` may also be a directory holding the media's files (mounted by someone else, or a test).
    """
    if os.path.isdir(device):
        return _read_file(Path(device), filename)
    if not os.path.exists(device):
        return None  # no provisioning CD attached: normal on most current VMs
    resolved = os.path.realpath(device)
    try:
        mounted = find_mount(mounts_file.read_text(errors="replace"), resolved)
    except OSError:
        mounted = None
    if mounted is not None:
        log.info("provisioning media already mounted", extra=fields(device=resolved, mountpoint=mounted))
        return _read_file(Path(mounted), filename)
    try:
        target = tempfile.mkdtemp(prefix="azprov-media-")  # mode 0700: nobody else looks in while mounted
    except OSError as e:
        raise MediaError("no private directory to mount the media on", error=e.strerror) from e
    try:
        fstype = _mount(resolved, target, fstypes, run)
        log.info("provisioning media mounted", extra=fields(device=resolved, fstype=fstype))
        try:
            return _read_file(Path(target), filename)
        finally:
            done = run(["umount", "--", target])
            if done.returncode != 0:
                log.warning("provisioning media cannot be unmounted", extra=fields(
                    mountpoint=target, error=clean(done.stderr.decode("utf-8", "replace").strip(), 120)))
    finally:
        try:
            os.rmdir(target)
        except OSError:
            pass  # still mounted (umount failed): leave the empty directory rather than hide the media
