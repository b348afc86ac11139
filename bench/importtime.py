"""Where azprov's start-up time goes: `python -X importtime` of real runs, grouped by top-level package.

    python bench/importtime.py [--build before=VENV]   # writes bench/raw/importtime-<label>.json

Measures, in the benchmark's azprov venv (bench/cache/azprov-venv, a regular install of this tree):
- a full provisioning run against the loopback fake fabric (P2's work; kept in the JSON only: two importing
  threads garble -X importtime's accounting),
- a later boot against a DONE record (P4's work),
- the dependency import floor `import requests, lxml.etree, transitions`, with the garbage collector's share
  of it (gc.callbacks timing every collection that runs during those imports).
Each is repeated and the run with the median total is kept. `-X importtime` adds its own overhead, so compare
these numbers with each other, not with the wall times in the scenario tables. `run.py` renders every
importtime-*.json it finds into RESULTS.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import run  # noqa: E402
from fakefabric import FakeFabric  # noqa: E402

REPEAT = 7
GC_PROBE = """
import gc, time
spent = [0.0, 0]; began = [0.0]
def cb(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - began[0]; spent[1] += 1
gc.callbacks.append(cb)
t = time.perf_counter()
import requests, lxml.etree, transitions
print(time.perf_counter() - t, spent[0], spent[1])
"""


LEAN = "import gc; gc.disable(); import requests, lxml.etree, transitions; "
AZPROV_MODULES = ("statemachine.cli, statemachine.runner, statemachine.fabric, statemachine.machine, "
                  "states.configuring, states.goalstate, states.reporting, states.network_wait, "
                  "states.configure.hostname")
DECOMPOSITION = (  # label, what it shows
    ("floor", "`import requests, lxml.etree, transitions` (the P2 reference)"),
    ("lean_floor", "the same with azprov's two process-level settings: gc off during imports, exit without "
                   "teardown (os._exit)"),
    ("lean_floor_plus_modules", "lean floor + importing azprov's modules on the P2 path (no work done)"),
    ("azprov_run", "a whole azprov provisioning run (P2)"),
)


def cpu_of(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU user+system) seconds of one child run."""
    import os
    import time

    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run.child_env())
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{argv} exited {status}")
    return time.monotonic() - t0, usage.ru_utime + usage.ru_stime


def decompose(python: str, azprov: str, repeat: int = 15) -> dict[str, dict[str, float]]:
    """Where P2's time goes, as CPU: each step adds one thing to the one before, interleaved runs."""
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in DECOMPOSITION}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            samples["floor"].append(cpu_of([python, "-c", "import requests, lxml.etree, transitions"]))
            samples["lean_floor"].append(cpu_of([python, "-c", LEAN + "import os; os._exit(0)"]))
            samples["lean_floor_plus_modules"].append(
                cpu_of([python, "-c", LEAN + f"import {AZPROV_MODULES}; import os; os._exit(0)"]))
            with FakeFabric(computer_name=run.COMPUTER_NAME, vm_id=run.VM_UUID) as fab:
                config = run.azprov_config(Path(tmp) / f"d{i}", fab.url)
                samples["azprov_run"].append(cpu_of([azprov, "--config", str(config)]))
    return {label: {"wall_ms": statistics.median(w for w, _ in v) * 1000,
                    "cpu_ms": statistics.median(c for _, c in v) * 1000,
                    "cpu_min_ms": min(c for _, c in v) * 1000} for label, v in samples.items()}


def parse(stderr: str) -> dict[str, Any]:
    """Total import time (the sum of every module's self time: additive even when a second thread imports
    at the same time, which garbles the nesting), and self time grouped by top-level package (ms)."""
    total = 0
    by_package: Counter[str] = Counter()
    modules = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        modules += 1
        total += int(self_us)
        by_package[name.strip().split(".")[0]] += int(self_us)
    return {"total_ms": total / 1000, "modules": modules,
            "top": [(name, us / 1000) for name, us in by_package.most_common(12)]}


def importtime(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
    return parse(done.stderr)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["total_ms"])
    chosen = dict(runs[len(runs) // 2])
    chosen["all_totals_ms"] = [round(r["total_ms"], 1) for r in runs]
    return chosen


def measure(builds: dict[str, tuple[str, str]], floor_python: str) -> dict[str, dict[str, Any]]:
    """builds: label -> (python, azprov script). All builds and the floor are measured in one interleaved
    loop, so a busy machine weighs on all of them alike."""
    full: dict[str, list[dict[str, Any]]] = {label: [] for label in builds}
    done_path: dict[str, list[dict[str, Any]]] = {label: [] for label in builds}
    floor, gc_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(REPEAT):
            for label, (python, azprov) in builds.items():
                with FakeFabric(computer_name=run.COMPUTER_NAME, vm_id=run.VM_UUID) as fab:
                    config = run.azprov_config(Path(tmp) / f"{label}-{i}", fab.url)
                    full[label].append(importtime([python, azprov, "--config", str(config)]))
                    done_path[label].append(importtime([python, azprov, "--config", str(config)]))
            floor.append(importtime([floor_python, "-c", "import requests, lxml.etree, transitions"]))
            out = subprocess.run([floor_python, "-c", GC_PROBE], capture_output=True, text=True,
                                 check=True).stdout.split()
            gc_runs.append({"imports_ms": float(out[0]) * 1000, "gc_ms": float(out[1]) * 1000,
                            "collections": int(out[2])})
    shared = {"import_floor": median_run(floor),
              "gc_during_floor_imports": {k: statistics.median(r[k] for r in gc_runs) for k in gc_runs[0]}}
    return {label: {"full_run": median_run(full[label]), "done_run": median_run(done_path[label]), **shared}
            for label in builds}


def render(raw_dir: Path) -> list[str]:
    found = {p.stem.removeprefix("importtime-"): json.loads(p.read_text())
             for p in sorted(raw_dir.glob("importtime-*.json"))}
    if not found:
        return []
    labels = sorted(found, key=lambda k: (k != "before", k))
    lines = ["## Start-up: `python -X importtime` (bench/importtime.py)", "",
             "Total import time: the sum of every module's self time (ms; median of 7 interleaved runs; "
             "importtime's own overhead included, and gc pauses inside imports count):",
             "", "| measurement | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for key, title in (("done_run", "later boot, DONE record"),
                       ("import_floor", "`import requests, lxml.etree, transitions`")):
        cells = [f"{found[lb][key]['total_ms']:.1f} ({found[lb][key]['modules']} modules)" for lb in labels]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    cells = [f"{found[lb]['gc_during_floor_imports']['gc_ms']:.1f} ms in "
             f"{found[lb]['gc_during_floor_imports']['collections']:.0f} collections" for lb in labels]
    lines += ["| gc during the floor's imports | " + " | ".join(cells) + " |", "",
              "A full provisioning run is not shown here: its NETWORK_WAIT thread imports requests and lxml while "
              "the main thread imports the rest, and `-X importtime` keeps one global account for both, so its "
              "per-module figures are garbled. The CPU decomposition below (os.wait4 rusage) covers that run.", ""]
    decomposition = next((found[lb]["decomposition"] for lb in labels if "decomposition" in found[lb]), None)
    if decomposition:
        lines += ["### Where P2's time goes (CPU, median of 15 interleaved runs, current tree)", "",
                  "| step | what it adds | CPU ms | min | wall ms |", "|---|---|---:|---:|---:|"]
        for label, what in DECOMPOSITION:
            d = decomposition[label]
            lines.append(f"| {label} | {what} | {d['cpu_ms']:.1f} | {d['cpu_min_ms']:.1f} | {d['wall_ms']:.1f} |")
        lines.append("")
    for lb in labels:
        for key in ("done_run",):
            top = ", ".join(f"{name} {ms:.1f}" for name, ms in found[lb][key]["top"][:10])
            lines.append(f"- {lb}, {key.replace('_', ' ')}: self time by package (ms): {top}")
        if "commit" in found[lb]:
            lines.append(f"- {lb}: commit {found[lb]['commit']}, {found[lb]['date']}")
    return lines + [""]


def main() -> int:
    """importtime.py [--build LABEL=VENV ...]: the current tree's bench venv is "after"; each --build adds a
    venv holding another build of azprov (e.g. the tree before a change), measured in the same loop."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build", action="append", default=[], metavar="LABEL=VENV")
    p.add_argument("--label", default="after", help="label of the current tree's build")
    args = p.parse_args()
    envs = peers.prepare(HERE / "cache", with_peers=False)
    builds = {args.label: (str(envs.azprov_python), str(envs.azprov_bin))}
    for spec in args.build:
        label, venv = spec.split("=", 1)
        builds[label] = (str(Path(venv) / "bin" / "python"), str(Path(venv) / "bin" / "azprov"))
    results = measure(builds, str(envs.azprov_python))
    results[args.label]["decomposition"] = decompose(str(envs.azprov_python), str(envs.azprov_bin))
    stamp = {"commit": run.git_commit(), "date": run.time.strftime("%Y-%m-%d %H:%M UTC", run.time.gmtime())}
    raw_dir = HERE / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("importtime-*.json"):
        old.unlink()  # one interleaved session at a time: figures from different sessions do not compare
    for label, result in results.items():
        (raw_dir / f"importtime-{label}.json").write_text(json.dumps({**result, **stamp}, indent=1) + "\n")
    print("\n".join(render(raw_dir)))
    (HERE / "RESULTS.md").write_text(run.render(HERE))  # RESULTS.md holds every figure: re-render it now
    return 0


if __name__ == "__main__":
    sys.exit(main())
