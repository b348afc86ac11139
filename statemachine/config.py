"""Configuration: typed, layered, validated before anything runs.

Layers, later wins: built-in defaults < /etc/azprov/azprov.toml < /etc/azprov/azprov.toml.d/*.toml (sorted)
< `--config FILE`. Each layer is a partial TOML document; keys are merged one by one. An unknown key, a wrong
type or a bad value raises `ConfigError` naming the key and the file, so the agent never starts
half-configured (exit 78). `conf/azprov.toml` must equal the defaults here; a test pins that.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

from statemachine.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on old Pythons only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SYSTEM_DIR = Path(os.environ.get("AZPROV_CONFIG_DIR", "/etc/azprov"))


# Sections are NamedTuples rather than dataclasses: as typed and immutable, but defined without generating
# and compiling methods at import, which every boot would pay for. The same holds for the other records.
class FabricConfig(NamedTuple):
    wireserver_url: str = "http://168.63.129.16"
    imds_url: str = "http://169.254.169.254"
    network_timeout: float = 300.0
    wireserver_timeout: float = 1200.0
    imds_timeout: float = 300.0
    request_timeout: float = 30.0
    health_protocol: str = "wireserver"


class PathsConfig(NamedTuple):
    state_dir: str = "/var/lib/azprov"
    root: str = "/"


class IdentityConfig(NamedTuple):
    product_uuid_path: str = "/sys/class/dmi/id/product_uuid"
    efi_path: str = "/sys/firmware/efi"


class HostnameConfig(NamedTuple):
    method: str = "auto"
    publish: bool = True  # send the new name in a DHCP REQUEST (states/configure/publish.py)


class ConfigureConfig(NamedTuple):
    steps: tuple[str, ...] = ("hostname",)


class UserConfig(NamedTuple):
    groups: tuple[str, ...] = ("sudo",)


class MediaConfig(NamedTuple):
    enabled: bool = False
    device: str = "/dev/sr0"
    path: str = "ovf-env.xml"


class LogConfig(NamedTuple):
    level: str = "info"


class KvpConfig(NamedTuple):
    enabled: bool = True
    pool_path: str = "/var/lib/hyperv/.kvp_pool_1"


class AgentConfig(NamedTuple):
    max_boot_attempts: int = 3


class Config(NamedTuple):
    fabric: FabricConfig = FabricConfig()
    paths: PathsConfig = PathsConfig()
    identity: IdentityConfig = IdentityConfig()
    hostname: HostnameConfig = HostnameConfig()
    configure: ConfigureConfig = ConfigureConfig()
    user: UserConfig = UserConfig()
    media: MediaConfig = MediaConfig()
    log: LogConfig = LogConfig()
    agent: AgentConfig = AgentConfig()
    kvp: KvpConfig = KvpConfig()

    @property
    def state_dir(self) -> Path:
        return Path(self.paths.state_dir)

    def total_budget(self) -> float:
        """Worst-case seconds a run can take: what the unit's TimeoutStartSec must exceed."""
        f = self.fabric
        return f.network_timeout + 2 * f.wireserver_timeout + f.imds_timeout


# Value checks beyond the type, keyed by "section.key". Each returns an error message or None.
def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


MAX_SECONDS = 365 * 86400.0  # beyond this (or inf) timers and socket timeouts overflow: a year is "forever"


def _seconds(v: Any) -> str | None:
    return None if 0 < v <= MAX_SECONDS else f"must be a number of seconds > 0 and <= {MAX_SECONDS:.0f}"


def _http_url(v: Any) -> str | None:
    ok = v.startswith(("http://", "https://")) and len(v) > len("http://") and not v.endswith("/")
    return None if ok else "must be an http:// or https:// URL without a trailing slash"


def _absolute(v: Any) -> str | None:
    return None if v.startswith("/") else "must be an absolute path"


# The configure steps states/configure/ provides, in the order they make sense to run.
KNOWN_STEPS = ("hostname", "user", "ssh_keys")


def _steps(v: Any) -> str | None:
    unknown = [s for s in v if s not in KNOWN_STEPS]
    if unknown:
        return f"unknown step(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_STEPS)}"
    if len(set(v)) != len(v):
        return "lists a step twice"
    return None


def _group_names(v: Any) -> str | None:
    bad = [g for g in v if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", g)]
    return f"not group names: {', '.join(map(repr, bad))}" if bad else None


def _relative_file(v: Any) -> str | None:
    ok = v and not v.startswith("/") and ".." not in v.split("/")
    return None if ok else "must be a path relative to the media's root, without '..'"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "fabric.wireserver_url": _http_url,
    "fabric.imds_url": _http_url,
    "fabric.network_timeout": _seconds,
    "fabric.wireserver_timeout": _seconds,
    "fabric.imds_timeout": _seconds,
    "fabric.request_timeout": _seconds,
    "fabric.health_protocol": _one_of("wireserver", "provisioning"),
    "paths.state_dir": _absolute,
    "paths.root": _absolute,
    "identity.product_uuid_path": _absolute,
    "identity.efi_path": _absolute,
    "hostname.method": _one_of("auto", "hostnamectl", "sethostname", "file"),
    "configure.steps": _steps,
    "user.groups": _group_names,
    "media.device": _absolute,
    "media.path": _relative_file,
    "log.level": _one_of("debug", "info", "warning", "error"),
    "agent.max_boot_attempts": _positive,
    "kvp.pool_path": _absolute,
}


# Each field type (its annotation's text) in the words of the TOML specification, for the error messages.
TOML_TYPES = {"float": "float", "int": "integer", "str": "string", "bool": "boolean",
              "tuple[str, ...]": "array of strings"}


def toml_type(value: Any) -> str:
    """What TOML calls the type of a value `tomllib` returned."""
    if isinstance(value, list):
        odd = [toml_type(v) for v in value if not isinstance(v, str)]
        return f"array containing {'an' if odd[0][0] in 'aeiou' else 'a'} {odd[0]}" if odd else "array"
    names = [(bool, "boolean"), (str, "string"), (int, "integer"), (float, "float"), (dict, "table"),
             (datetime.datetime, "date-time"), (datetime.date, "date"), (datetime.time, "time")]
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


def _check_type(key: str, expected: str, value: Any, source: str) -> Any:
    """Coerce what TOML gave us to the field's type (its annotation's text), or name the key that is wrong."""
    if expected == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected == "str" and isinstance(value, str):
        return value
    if expected == "bool" and isinstance(value, bool):
        return value
    if expected == "tuple[str, ...]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError("configuration value has the wrong type", file=source, key=key,
                      expected=TOML_TYPES.get(expected, expected), got=toml_type(value))


def merge(config: Config, layer: Mapping[str, Any], source: str) -> Config:
    """Apply one parsed TOML document on top of `config`. Pure; raises ConfigError naming the key."""
    sections: dict[str, Any] = {}
    for section_name, table in layer.items():
        if section_name not in Config._fields:
            raise ConfigError("unknown configuration key", file=source, key=section_name)
        if not isinstance(table, dict):
            raise ConfigError("configuration section must be a table", file=source, key=section_name)
        current = getattr(config, section_name)
        # Each field's annotation as text ("float", "tuple[str, ...]"): NamedTuple keeps it as a ForwardRef.
        types = {k: str(getattr(t, "__forward_arg__", t)) for k, t in type(current).__annotations__.items()}
        changes: dict[str, Any] = {}
        for key, value in table.items():
            dotted = f"{section_name}.{key}"
            if key not in types:
                raise ConfigError("unknown configuration key", file=source, key=dotted)
            value = _check_type(dotted, types[key], value, source)
            problem = CHECKS[dotted](value) if dotted in CHECKS else None
            if problem:
                raise ConfigError("configuration value is invalid", file=source, key=dotted, problem=problem,
                                  value=value)
            changes[key] = value
        sections[section_name] = current._replace(**changes)
    return config._replace(**sections)


MAX_FILE = 1 << 20  # a config file is a few KiB


def _read(path: Path) -> bytes:
    """The file's bytes; refuses what is not a regular file (a FIFO would block the boot, /dev/zero never
    ends) and anything absurdly large."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("configuration file is not a regular file", file=str(path))
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise ConfigError("configuration file is too large", file=str(path), limit=MAX_FILE)
    return data


def read_text(path: Path) -> str:
    try:
        return _read(path).decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError("configuration file not found", file=str(path)) from e
    except OSError as e:
        raise ConfigError("configuration file is unreadable", file=str(path), error=e.strerror) from e
    except UnicodeDecodeError as e:
        raise ConfigError("configuration file is not valid UTF-8", file=str(path), error=str(e)) from e


def parse_text(text: str, source: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = tomllib.loads(text)
        return document
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:  # ValueError: a 5000-digit integer
        at = re.search(r"at line (\d+)", str(e))
        place = {"line": int(at.group(1))} if at else {}
        raise ConfigError("configuration file is not valid TOML", file=source, **place,
                          error=str(e)[:200]) from e


# A table header `[a.b]` / `[[a]]` and the dotted key before a line's `=`, as far as the error lines need.
# Plain strings, compiled by `re` on first use: only a broken config needs them, not every boot.
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'"'[^']*')"
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER = rf"\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$"
_KEY_LINE = rf"\s*({_DOTTED})\s*="


def _key_parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_BARE_OR_QUOTED, dotted)]


def find_line(text: str, key: str) -> int | None:
    """The 1-based line of `text` (a TOML document) where `key` ("section.key", or a section alone) is set:
    under its `[section]` header, as a dotted key, or as an inline table; a section alone is found at its
    header. Best effort: None when not found. Pure."""
    target = key.split(".")
    table: list[str] = []
    in_string = ""  # the delimiter of the multi-line string being skipped
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:
            if in_string in line:
                in_string = ""
            continue
        header = re.match(_HEADER, line)
        assigned = None if header else re.match(_KEY_LINE, line)
        if header:
            table = _key_parts(header.group(2))
            if table == target:
                return number
        elif assigned:
            path = table + _key_parts(assigned.group(1))
            if path[:len(target)] == target or (len(path) < len(target) and path == target[:len(path)]
                                                 and line[assigned.end():].lstrip().startswith("{")):
                return number
        for delimiter in ('"""', "'''"):
            if line.count(delimiter) % 2:
                in_string = delimiter
                break
    return None


def _located(error: ConfigError, text: str) -> ConfigError:
    """`error` with the line of its key in `text` where one is found; file, line and key lead its data,
    as they lead its message."""
    data = error.supporting_data
    key = data.get("key")
    line = data.get("line") or (find_line(text, key) if isinstance(key, str) else None)
    lead = {"file": data.get("file"), "line": line, "key": key}
    error.supporting_data = {**{k: v for k, v in lead.items() if v is not None},
                             **{k: v for k, v in data.items() if k not in lead}}
    return error


def system_layers(system_dir: Path = SYSTEM_DIR) -> list[Path]:
    """The files that exist among /etc/azprov/azprov.toml and /etc/azprov/azprov.toml.d/*.toml."""
    main = system_dir / "azprov.toml"
    drop_in = system_dir / "azprov.toml.d"
    layers = [main] if main.exists() else []
    if drop_in.is_dir():
        layers += sorted(p for p in drop_in.iterdir() if p.suffix == ".toml")
    return layers


def load(paths: Iterable[Path]) -> Config:
    """The defaults with each file applied in turn."""
    config = Config()
    for path in paths:
        text = read_text(path)
        try:
            config = merge(config, parse_text(text, str(path)), str(path))
        except ConfigError as e:
            _located(e, text)
            raise
    return config


def load_layers(explicit: Path | None, system_dir: Path = SYSTEM_DIR) -> Config:
    """Defaults < system file < drop-ins < `--config`."""
    paths = system_layers(system_dir)
    if explicit is not None:
        paths.append(explicit)
    return load(paths)


def load_valid(explicit: Path | None, system_dir: Path = SYSTEM_DIR) -> tuple[Config, list[ConfigError]]:
    """For when the config is broken but azprov must still act (`--status`): the defaults with every key
    that is valid on its own applied, layer by layer, and the problems in layer order. A layer that cannot
    be read or parsed contributes nothing; a layer with a bad key contributes its other keys."""
    config, problems = Config(), []
    try:
        paths = system_layers(system_dir) + ([explicit] if explicit is not None else [])
    except OSError as e:
        return config, [ConfigError("configuration directory is unreadable", file=str(system_dir),
                                    error=e.strerror)]
    for path in paths:
        text = ""
        try:
            text = read_text(path)
            document = parse_text(text, str(path))
        except ConfigError as e:
            problems.append(_located(e, text))
            continue
        for section, table in document.items():
            pairs = [{section: {key: value}} for key, value in table.items()] if isinstance(table, dict) else [
                {section: table}]
            for pair in pairs:
                try:
                    config = merge(config, pair, str(path))
                except ConfigError as e:
                    problems.append(_located(e, text))
    return config, problems
