"""`make install DESTDIR=` refuses, before writing anything, a target whose Python cannot run the venv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def target_python(dest: Path, venv_module: bool = True) -> None:
    """Give a staging root this interpreter's path and stdlib markers, as a target with the same Python has."""
    base = Path(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (dest / base.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
    (dest / base.relative_to("/")).symlink_to(base)
    (dest / stdlib.relative_to("/") / "venv").mkdir(parents=True)
    (dest / stdlib.relative_to("/") / "os.py").touch()
    if venv_module:
        (dest / stdlib.relative_to("/") / "venv" / "__init__.py").touch()


def install(dest: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZPROV_INSTALL_MODE": "relocate", "WHEELHOUSE": str(dest / "no-such-wheelhouse")}
    return subprocess.run(["sh", str(REPO / "scripts" / "install.sh")], capture_output=True, text=True,
                          env={**env, "DESTDIR": str(dest), "PREFIX": "/opt/azprov", "PYTHON": sys.executable})


def written(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize("case", ["no interpreter", "no venv module"])
def test_refuses_a_target_without_this_python(tmp_path: Path, case: str) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    if case == "no venv module":
        target_python(dest, venv_module=False)
    before = written(dest)
    out = install(dest)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("install.sh: error:")]
    assert len(errors) == 1, out.stderr
    assert ("PYTHON=" if case == "no interpreter" else "venv") in errors[0]
    assert written(dest) == before, "install.sh wrote into the target before refusing"


def test_a_matching_target_passes_the_check(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    target_python(dest)
    out = install(dest)
    # Past the interpreter check, it stops at the (deliberately missing) wheelhouse: nothing downloaded.
    assert out.returncode != 0 and "no-such-wheelhouse" in out.stderr, out.stderr
