"""The Debian package, `make install` and the project metadata agree with each other."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import statemachine

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "debian"
FIXTURES = REPO / "tests" / "fixtures" / "azure"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_one_version_everywhere() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"^azprov \(([^)]+)\) \S+; urgency=\w+$", first)
    assert match, first
    # A native package: the Debian version is the upstream version itself.
    assert match.group(1) == pyproject()["project"]["version"] == statemachine.__version__


def test_licence_matches() -> None:
    assert pyproject()["project"]["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert "Files: *\nCopyright: " in (DEBIAN / "copyright").read_text()
    assert re.search(r"Files: \*\nCopyright: [^\n]+\nLicense: Expat\n", (DEBIAN / "copyright").read_text())


def test_copyright_covers_every_fixture_source() -> None:
    copyright_text = (DEBIAN / "copyright").read_text()
    prefixes = {p.name.split("_", 1)[0] for p in FIXTURES.iterdir() if p.name != "PROVENANCE.md"}
    assert prefixes == {"wala", "cloudinit", "azureinit", "afterburn"}
    for prefix in prefixes:
        assert f"Files: tests/fixtures/azure/{prefix}_*\n" in copyright_text


def test_one_unit_for_both_installs() -> None:
    unit = (REPO / "conf" / "azprov.service").read_text()
    assert "ExecStart=/usr/lib/azprov/bin/azprov\n" in unit
    assert "Documentation=man:azprov(8)" in unit
    rules = (DEBIAN / "rules").read_text()
    assert "conf/azprov.service $(PKG)/lib/systemd/system/azprov.service" in rules
    assert "debian/azprov-launcher $(PKG)$(PRIVATE)/bin/azprov" in rules and "PRIVATE = /usr/lib/azprov" in rules
    assert "dh_installsystemd --no-start" in rules
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    assert "conf/azprov.service" in install_sh and 'VENV="$PREFIX/lib/azprov"' in install_sh


def test_package_depends_on_the_distribution_libraries() -> None:
    control = (DEBIAN / "control").read_text()
    depends = control.split("\nPackage: azprov\n", 1)[1].split("\nDescription:", 1)[0]
    for dependency in pyproject()["project"]["dependencies"]:
        name = re.split(r"[<>=;! ]", dependency, maxsplit=1)[0].lower()
        assert f"python3-{name}" in depends, f"{dependency} has no python3-{name} in debian/control"


def test_launcher_puts_the_private_directory_first() -> None:
    launcher = (DEBIAN / "azprov-launcher").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert launcher.index('sys.path.insert(0, "/usr/lib/azprov")') < launcher.index("from statemachine")
