"""The test data ships with the repository: every fixture family a test globs is non-empty, every file is
listed in PROVENANCE.md (which carries the licence attribution), and no test looks for data outside the
checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO

TESTS = REPO / "tests"
# FIXTURES.glob("pattern") anywhere in the tests: each such pattern is a family some test iterates over.
GLOB = re.compile(r"""FIXTURES\.r?glob\(\s*(['"])(?P<pattern>[^'"]+)\1""")


def fixture_families() -> list[str]:
    patterns: set[str] = set()
    for source in sorted(TESTS.glob("*.py")):
        if source.name == Path(__file__).name:
            continue
        patterns.update(m.group("pattern") for m in GLOB.finditer(source.read_text(encoding="utf-8")))
    return sorted(patterns)


def test_fixture_directory_is_inside_the_repository() -> None:
    assert FIXTURES.is_dir(), f"missing fixture directory {FIXTURES}"
    assert FIXTURES.resolve().is_relative_to(REPO.resolve())


def test_families_were_found() -> None:
    # If the scan found nothing, the per-family test below would pass vacuously.
    assert len(fixture_families()) >= 3, fixture_families()


@pytest.mark.parametrize("pattern", fixture_families())
def test_family_is_not_empty(pattern: str) -> None:
    assert sorted(FIXTURES.glob(pattern)), f"fixture family {pattern!r} is empty under {FIXTURES}"


def test_every_fixture_has_provenance() -> None:
    provenance = (FIXTURES / "PROVENANCE.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| ([\w.-]+\.(?:xml|json)) \|", provenance, re.MULTILINE))
    present = {p.name for p in FIXTURES.iterdir() if p.name != "PROVENANCE.md"}
    assert present, f"no fixtures under {FIXTURES}"
    assert present == listed, {"unlisted": sorted(present - listed), "missing": sorted(listed - present)}


def test_no_test_reads_outside_the_repository() -> None:
    # Data beside the checkout exists on some machines only; a test that needs it passes there and nowhere else.
    outside = re.compile(r"""REPO\.parent|AZPROV_FIXTURES|["'/]shared["'/]""")
    offenders = []
    for source in sorted(TESTS.glob("*.py")):
        if source.name == Path(__file__).name:
            continue
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert not offenders, offenders
