"""The README stays a front page, its links lead somewhere, and user-facing text carries no internal
references (tracker numbers, working notes, paths of a development machine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# docs/boot-results.* are written by the boot test (tests/boot/run_boot.py --record).
USER_FACING = [README, REPO / "bench" / "README.md",
               *sorted(p for p in (REPO / "docs").glob("*.md") if not p.name.startswith("boot-results")),
               *sorted((REPO / "man").iterdir()), *sorted((REPO / "conf").iterdir()),
               *sorted(p for p in (REPO / "debian").rglob("*") if p.is_file())]
INTERNAL = re.compile(r"\bissue \d|\bseed[ ]document|\bscenario \d|/work/|\.\./shared|\bthis session\b", re.IGNORECASE)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < 300
    head = "\n".join(lines[:20])
    assert "make demo" in head and "make test" in head, "the two commands come first"
    assert '"Creating generalized images without a provisioning agent"' in README.read_text()


def test_readme_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert len(local) >= 8
    missing = [link for link in local if not (REPO / link).exists()]
    # Pages other parts of the project contribute; everything else must exist in this tree.
    contributed = {"docs/security.md", "docs/fleet.md", "docs/boot.md", "docs/hostname-publishing.md",
                   "docs/operations-status.md", "docs/lifecycle.md"}
    assert set(missing) <= contributed, missing


@pytest.mark.parametrize("path", [p for p in USER_FACING if p.exists()], ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_references(path: Path) -> None:
    found = [line.strip() for line in path.read_text(errors="replace").splitlines() if INTERNAL.search(line)]
    assert not found, found
