"""The later-boot fast path: exit at once when this VM was provisioned under this very configuration.

A provisioned VM runs azprov on every boot, and the answer is nearly always "done, same VM". The full CLI
needs config, tomllib, logging, pathlib and argparse to say so: several times the interpreter's
own start-up. So whenever a run ends DONE, `remember()` writes a stamp next to the record with everything
that answer rested on: the exact text of every config layer that was validated, the raw SMBIOS UUID and the
EFI marker as read, and the record file's identity (inode, size, mtime). `already_done()` runs before anything
heavy is imported and says yes only when all of that is unchanged. It imports nothing beyond `os` and `sys`
(`re`, `json`, `tomllib`, `typing` would each add a third of the interpreter's start): the stamp is compared
as text (`repr` of the observations), and the state dir is read from the layers by a line scan that hands
anything unusual to tomllib. A wrong guess there can only miss: a stamp matches only layers of identical
text, and the full run that wrote it found its state dir from that same text. Any difference, any error,
any other argument: it says no and the full CLI decides, so it only ever skips what the full path would skip.
It never writes, never locks, never logs through `logging`: its one line is formatted like `statemachine.log`.
"""

from __future__ import annotations

import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing/collections.abc at run time costs ~5 ms
    from collections.abc import Sequence
    from typing import Any

STAMP_FILE = "done-stamp"  # in paths.state_dir, next to the record: 4 lines, then repr(observations())
STAMP_SCHEMA = 1
STATE_FILE = "state.json"  # = persistence.STATE_FILE (a test keeps them equal; importing it costs more)
DEFAULT_STATE_DIR = "/var/lib/azprov"  # = config.PathsConfig.state_dir (same test)
MESSAGE = "azprov: already provisioned on this VM; nothing to do"
_QUIET_LEVELS = ("warning", "error")  # log levels that hide the INFO line


def config_argument(argv: Sequence[str]) -> tuple[bool, str | None]:
    """(plain, --config value): plain is the unit's own command line, nothing or one `--config FILE`, read
    here exactly as argparse would read it (a property test holds the two together). Pure. The fast path
    takes only plain runs, and `cli` skips argparse for them; anything else goes to argparse."""
    if not argv:
        return True, None
    if len(argv) == 2 and argv[0] == "--config" and argv[1] and not argv[1].startswith("-"):
        return True, argv[1]  # a value starting with "-" is an option to argparse, and "" is no file
    if len(argv) == 1 and argv[0].startswith("--config=") and len(argv[0]) > len("--config="):
        return True, argv[0][len("--config="):]
    return False, None


def layer_paths(explicit: str | None) -> list[str]:
    """The same files, in the same order, as `config.system_layers()` + `--config`."""
    system_dir = os.environ.get("AZPROV_CONFIG_DIR", "/etc/azprov")
    main = os.path.join(system_dir, "azprov.toml")
    layers = [main] if os.path.exists(main) else []
    drop_in = os.path.join(system_dir, "azprov.toml.d")
    if os.path.isdir(drop_in):
        names = [n for n in os.listdir(drop_in) if os.path.splitext(n)[1] == ".toml"]
        layers += [os.path.join(drop_in, n) for n in sorted(names)]
    if explicit is not None:
        layers.append(explicit)
    return layers


_S_IFMT, _S_IFREG = 0o170000, 0o100000  # stat.S_ISREG without importing stat
MAX_LAYER = 1 << 20  # = config.MAX_FILE


def read_layers(paths: Sequence[str]) -> list[list[str]]:
    """Every layer's text. Only regular files, opened without blocking and read up to a cap: a FIFO would
    hang the boot here and /dev/zero never ends (anything odd raises, and the full CLI says exit 78)."""
    layers = []
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
                raise ValueError(f"{path} is not a regular file")
            data = f.read(MAX_LAYER + 1)
        if len(data) > MAX_LAYER:
            raise ValueError(f"{path} is too large")
        layers.append([path, data.decode("utf-8")])
    return layers


def simple_state_dir(text: str) -> tuple[bool, str | None]:
    """(understood, value) of paths.state_dir in one TOML layer, for the plain `[paths]` / `state_dir = "..."`
    shape. Anything else that mentions state_dir (dotted keys, inline tables, escapes) is not understood."""
    table = ""
    value = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            table = line.split("]", 1)[0].lstrip("[").strip()
            continue
        if "state_dir" not in line:
            continue
        key, _, rest = line.partition("=")
        rest = rest.strip()
        end = rest.find('"', 1)
        if table != "paths" or key.strip() != "state_dir" or not rest.startswith('"') or end < 0:
            return False, None
        tail = rest[end + 1:].strip()
        if "\\" in rest[:end] or (tail and not tail.startswith("#")):
            return False, None
        value = rest[1:end]
    return True, value


def state_dir_of(layers: Sequence[Sequence[str]]) -> str:
    """paths.state_dir after merging the layers (later wins), or the default."""
    state_dir = DEFAULT_STATE_DIR
    for _, text in layers:
        understood, value = simple_state_dir(text)
        if not understood:
            return state_dir_by_tomllib(layers)
        if value is not None:
            state_dir = value
    return state_dir


def state_dir_by_tomllib(layers: Sequence[Sequence[str]]) -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    state_dir = DEFAULT_STATE_DIR
    for _, text in layers:
        value = tomllib.loads(text).get("paths", {}).get("state_dir")
        if isinstance(value, str):
            state_dir = value
    return state_dir


def read_stamp(state_dir: str) -> str:
    """The stamp's text, only from a state dir and a file that `persistence.ensure_state_dir` would trust
    as they are (ours, not open to others; no symlinks): anything else raises and the full path decides."""
    st = os.lstat(state_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(state_dir)
    fd = os.open(os.path.join(state_dir, STAMP_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(state_dir)
        return f.read()


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def record_identity(state_dir: str) -> list[int]:
    st = os.stat(os.path.join(state_dir, STATE_FILE), follow_symlinks=False)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def observations(layers: list[list[str]], state_dir: str, product_uuid_path: str, efi_path: str) -> dict[str, Any]:
    """What a DONE answer rests on; the stamp stores it and the fast path compares it."""
    return {"schema": STAMP_SCHEMA, "python": sys.hexversion, "layers": layers,
            "record": record_identity(state_dir), "product_uuid_path": product_uuid_path,
            "product_uuid": read_text(product_uuid_path), "efi_path": efi_path, "efi": os.path.exists(efi_path)}


def already_done(argv: Sequence[str]) -> bool:
    """True (after printing the usual line) when the stamp shows nothing changed since a DONE run."""
    usable, explicit = config_argument(argv)
    if not usable:
        return False
    try:
        layers = read_layers(layer_paths(explicit))
        state_dir = state_dir_of(layers)
        vm_id, level, product_uuid_path, efi_path, seen = read_stamp(state_dir).split("\n", 4)
        if seen != repr(observations(layers, state_dir, product_uuid_path, efi_path)):
            return False
    except Exception:  # any doubt at all: the full path decides
        return False
    override = os.environ.get("SYSTEMD_LOG_LEVEL", "").lower()  # as statemachine.log.setup() reads it
    if override in ("debug", "info", "warning", "error"):
        level = override
    if level not in _QUIET_LEVELS:
        line = f"{MESSAGE} vm_id={vm_id!r}"
        try:
            print(f"<6>{line}" if os.environ.get("JOURNAL_STREAM") else line, flush=True)
        except (OSError, ValueError):  # a closed stdout: logging would also carry on, and so do we
            pass
    return True


def remember(layers: list[list[str]], state_dir: str, product_uuid_path: str, efi_path: str, vm_id: str,
             log_level: str) -> None:
    """Write the stamp after a run that ended DONE; `layers` are [path, text] of the config it validated.
    A cache: failures are ignored (the next boot is only slower)."""
    from pathlib import Path  # the writing side: the fast path itself never imports these

    from statemachine import fs

    try:
        seen = observations(layers, state_dir, product_uuid_path, efi_path)
        for line in (vm_id, log_level, product_uuid_path, efi_path):
            if "\n" in line:
                return
        text = "\n".join((vm_id, log_level, product_uuid_path, efi_path, repr(seen)))
        fs.atomic_write(Path(state_dir), STAMP_FILE, text.encode("utf-8"), 0o600, dir_mode=0o700)
    except (OSError, ValueError, fs.Refused):
        pass

