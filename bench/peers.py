"""Fetch the peers and build the environments the benchmark runs them in. Nothing is installed system-wide.

- Debian's `cloud-init` and `waagent` packages: `apt-get download` (after `apt-get update` when the package
  is unknown), `dpkg-deb -x` into the cache; their Python trees are put on `sys.path` by the drivers.
- `peers-venv`: the peers' Python dependencies (what Debian's Depends names), from PyPI. WALinuxAgent's
  `python3-pkg-resources` comes from setuptools pinned to Debian bookworm's version, with setuptools'
  `distutils-precedence.pth` removed: Debian's python3-pkg-resources ships no distutils shim, and the shim
  costs WALinuxAgent ~14 MiB and part of its start-up.
- `azprov-venv`: azprov installed from this tree the way a user gets it (a regular, non-editable install;
  an editable install adds a path finder to every interpreter start), rebuilt when a source file changes.
  The reference measurements (`python -c pass`, the dependency import floor) run in this same venv.

Both venvs are built on the interpreter an image runs: `BENCH_PYTHON`, by default `/usr/bin/python3` where it
exists (else the interpreter behind the running venv). They are created `--without-pip`, so they hold no
setuptools and no distutils shim of their own; the running interpreter's pip installs into them
(`pip --python`). Everything lives under the cache dir (bench/cache by default, git-ignored), keyed by stamp
files that name the base interpreter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PACKAGES = ("cloud-init", "waagent")
PEER_REQUIREMENTS = ("requests", "pyyaml", "jinja2", "jsonpatch", "jsonschema", "configobj", "oauthlib",
                     "netifaces", "pyserial", "distro", "setuptools==66.1.1")
SHIM = "distutils-precedence.pth"
DIST_PACKAGES = "usr/lib/python3/dist-packages"


@dataclasses.dataclass(frozen=True)
class Environments:
    azprov_python: Path
    azprov_bin: Path
    peers_python: Path
    cloudinit_path: Path
    waagent_path: Path
    versions: dict[str, str]
    before_bin: Path | None = None  # run.py --before-venv: azprov as it was before a change


def _run(cmd: list[str], **kw: object) -> str:
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    return str(done.stdout)


def _venv(path: Path, base_python: str) -> Path:
    """A venv on base_python without pip or setuptools; rebuilt when it was made from another interpreter."""
    python = path / "bin" / "python"
    stamp = path / ".base-python"
    if python.exists() and (not stamp.exists() or stamp.read_text() != _describe(base_python)):
        shutil.rmtree(path)
    if not python.exists():
        _run([base_python, "-m", "venv", "--without-pip", str(path)])
        stamp.write_text(_describe(base_python))
    return python


def _describe(python: str) -> str:
    return f"{python} {_run([python, '-c', 'import sys; print(sys.version)']).strip()}"


def _pip(target: Path, *args: str) -> None:
    """The running interpreter's pip, installing into the venv of `target` (pip >= 22.3)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "--python", str(target), "install", "-q", *args], env=env)


def remove_shims(venv: Path) -> None:
    """No agent runs with setuptools' distutils shim: an image has none (see the module docstring)."""
    for shim in venv.glob(f"lib/python*/site-packages/{SHIM}"):
        shim.unlink()


def installed(python: Path) -> dict[str, str]:
    """Every distribution in the venv of `python`, name → version."""
    return dict(sorted(json.loads(_run([str(python), "-c",
                                        "import json, importlib.metadata as m; print(json.dumps("
                                        "{d.metadata['Name']: d.version for d in m.distributions()}))"])).items()))


def fetch_deb(package: str, cache: Path) -> tuple[Path, str]:
    """Download and extract one Debian package; returns (extracted dist-packages dir, version)."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        try:
            _run(["apt-get", "download", package], cwd=debs)
        except subprocess.CalledProcessError:
            _run(["apt-get", "update", "-qq"])
            _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = cache / "root" / f"{package}-{version}"
    if not (root / DIST_PACKAGES).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    return root / DIST_PACKAGES, version


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", *REPO.glob("statemachine/**/*.py"), *REPO.glob("states/**/*.py")]):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def azprov_venv(cache: Path, base_python: str) -> Path:
    """A venv with azprov installed from this tree (regular install), reinstalled when the sources change."""
    venv = cache / "azprov-venv"
    python = _venv(venv, base_python)
    stamp = venv / ".azprov-digest"
    digest = _source_digest()
    if not stamp.exists() or stamp.read_text() != digest:
        _pip(python, "--force-reinstall", "--no-deps", str(REPO))
        _pip(python, str(REPO))  # the dependencies, once
        remove_shims(venv)
        _run([str(python), "-m", "compileall", "-q", str(venv / "lib")])
        stamp.write_text(digest)
    return python


def peers_venv(cache: Path, base_python: str) -> Path:
    venv = cache / "peers-venv"
    python = _venv(venv, base_python)
    stamp = venv / ".requirements"
    wanted = " ".join(PEER_REQUIREMENTS)
    if not stamp.exists() or stamp.read_text() != wanted:
        _pip(python, *PEER_REQUIREMENTS)
        remove_shims(venv)
        _run([str(python), "-m", "compileall", "-q", str(venv / "lib")])
        stamp.write_text(wanted)
    return python


def bench_python() -> str:
    """The interpreter an image runs: BENCH_PYTHON, else /usr/bin/python3 where it exists, else the one behind
    the running venv."""
    chosen = os.environ.get("BENCH_PYTHON")
    if chosen:
        return chosen
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3"
    return getattr(sys, "_base_executable", None) or sys.executable


def current(python: Path) -> Environments:
    """The running venv's azprov (editable or not), no peers: quick enough for the smoke test."""
    return Environments(python, python.parent / "azprov", Path("/nonexistent"), Path("/nonexistent"),
                        Path("/nonexistent"), {"python": sys.version.split()[0]})


def prepare(cache: Path, with_peers: bool = True) -> Environments:
    cache.mkdir(parents=True, exist_ok=True)
    base = bench_python()
    azprov_python = azprov_venv(cache, base)
    ours = installed(azprov_python)
    versions = {"python": f"{base} ({_run([base, '-c', 'import platform; print(platform.python_version())']).strip()})"}
    versions.update({d: ours[d] for d in ("azprov", "requests", "lxml", "transitions", "urllib3") if d in ours})
    peers_python = cloudinit = waagent = Path("/nonexistent")
    if with_peers:
        peers_python = peers_venv(cache, base)
        cloudinit, versions["cloud-init (Debian)"] = fetch_deb("cloud-init", cache)
        waagent, versions["waagent (Debian)"] = fetch_deb("waagent", cache)
        versions["peers-venv"] = ", ".join(f"{k} {v}" for k, v in installed(peers_python).items())
        for tree in (cloudinit, waagent):  # compile once, as dpkg's postinst would: no first-run penalty
            subprocess.run([str(peers_python), "-m", "compileall", "-q", str(tree)], check=False,
                           capture_output=True)
    return Environments(azprov_python, azprov_python.parent / "azprov", peers_python, cloudinit, waagent, versions)


if __name__ == "__main__":
    envs = prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "cache")
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(envs).items()}, indent=2))
