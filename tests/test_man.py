"""The man pages are written by hand; these tests keep them complete as the parser and the schema grow:
every option and command of the argparse parser, every exit code and environment variable of the code,
and every configuration key with its type and default must appear. `man -l` must render both."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from statemachine import arguments, config, errors

REPO = Path(__file__).resolve().parent.parent
AZPROV_8 = REPO / "man" / "azprov.8"
AZPROV_TOML_5 = REPO / "man" / "azprov.toml.5"
TYPES = {"str": "string", "float": "number", "int": "integer", "bool": "boolean",
         "tuple[str, ...]": "array of strings"}


def plain(roff: str) -> str:
    """The page's words: escapes for '-', quotes and fonts removed (what `man` shows, without its layout)."""
    text = re.sub(r"\\f[BIRP]|\\f\(\w\w|\\&", "", roff)
    return text.replace("\\-", "-").replace("\\(dq", '"').replace("\\e", "\\")


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_every_option_and_command_is_in_azprov_8() -> None:
    page = plain(AZPROV_8.read_text())
    actions = arguments.build_parser()._actions
    names = [s for a in actions for s in a.option_strings]
    names += [c for a in actions if not a.option_strings and a.choices for c in a.choices]
    assert len(names) > 10
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", page), f"{name} is not in man/azprov.8"
    for action in actions:
        if action.metavar and action.option_strings and not isinstance(action, argparse._VersionAction):
            option, metavar = action.option_strings[-1], action.metavar
            assert re.search(rf'^\.BI {option} " {metavar}"$', page, re.MULTILINE), f"no item {option} {metavar}"


def exit_codes() -> set[int]:
    """Every exit status the code names: EX_*/EXIT_* constants and `exit_code = ...` of the error classes."""
    codes = {128 + 2, 128 + 15}  # stopped by SIGINT, SIGTERM
    named: dict[str, int] = {}
    for source in sorted([*REPO.glob("statemachine/**/*.py"), *REPO.glob("states/**/*.py")]):
        text = source.read_text()
        named.update((k, int(v)) for k, v in re.findall(r"^((?:EX|EXIT)_[A-Z_]+) *= *(\d+)", text, re.MULTILINE))
        for value in re.findall(r"^ +exit_code *= *(\w+)", text, re.MULTILINE):
            codes.add(int(value) if value.isdigit() else named[value])
    codes.update(named.values())
    assert {0, 1, 2, errors.EX_USAGE, errors.EX_CONFIG} <= codes, codes
    return codes


def test_every_exit_code_is_in_azprov_8() -> None:
    section = plain(AZPROV_8.read_text()).split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in sorted(exit_codes()):
        assert re.search(rf"^\.BR? .*\b{code}\b", section, re.MULTILINE), f"exit status {code} is not in azprov(8)"


def environment_variables() -> set[str]:
    found: set[str] = set()
    for source in sorted([*REPO.glob("statemachine/**/*.py"), *REPO.glob("states/**/*.py")]):
        found.update(re.findall(r"""environ(?:\.get\(|\[)\s*["']([A-Z_]+)["']""", source.read_text()))
    return found


def test_every_environment_variable_is_in_azprov_8() -> None:
    variables = environment_variables()
    assert "AZPROV_CONFIG_DIR" in variables
    section = plain(AZPROV_8.read_text()).split(".SH ENVIRONMENT", 1)[1].split(".SH ", 1)[0]
    for name in sorted(variables):
        assert f".B {name}\n" in section, f"environment variable {name} is not in azprov(8)"


def test_every_file_is_in_azprov_8() -> None:
    page = plain(AZPROV_8.read_text())
    defaults = config.Config()
    for path in ("/etc/azprov/azprov.toml", "/etc/azprov/azprov.toml.d/*.toml",
                 f"{defaults.paths.state_dir}/state.json", f"{defaults.paths.state_dir}/lock",
                 defaults.kvp.pool_path, "/etc/azprov/disabled", "azprov.service"):
        assert path in page, f"{path} is not in azprov(8)"


def test_every_key_type_and_default_is_in_azprov_toml_5() -> None:
    page = plain(AZPROV_TOML_5.read_text())
    defaults = config.Config()
    for section in config.Config._fields:
        assert f'.SH "[{section}] SECTION"' in page, f"[{section}] has no section in azprov.toml(5)"
        current = getattr(defaults, section)
        for key, annotation in type(current).__annotations__.items():
            kind = TYPES[str(getattr(annotation, "__forward_arg__", annotation))]
            entry = f".B {section}.{key}\nType: {kind}. Default: {toml(getattr(current, key))}."
            assert entry in page, f"azprov.toml(5) lacks {entry!r}"


def test_layering_rules_are_in_azprov_toml_5() -> None:
    page = plain(AZPROV_TOML_5.read_text())
    for words in ("/etc/azprov/azprov.toml", "/etc/azprov/azprov.toml.d/*.toml", "--config", "AZPROV_CONFIG_DIR",
                  "later layer wins", "78"):
        assert words in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed (.ci/run installs man-db)")
@pytest.mark.parametrize("page", [AZPROV_8, AZPROV_TOML_5], ids=lambda p: p.name)
def test_man_renders(page: Path) -> None:
    out = subprocess.run(["man", "--warnings", "-l", "-E", "UTF-8", str(page)], capture_output=True, text=True,
                         env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    assert "NAME" in out.stdout and len(out.stdout.splitlines()) > 40
