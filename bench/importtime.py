"""Where azprov's start-up time goes: `python -X importtime` of real runs, grouped by top-level package.

    python bench/importtime.py LABEL     # e.g. "before" / "after"; writes bench/raw/importtime-LABEL.json

Measures, in the benchmark's azprov venv (bench/cache/azprov-venv, a regular install of this tree):
- a full provisioning run against the loopback fake fabric (P2's work),
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


def parse(stderr: str) -> dict[str, Any]:
    """Total of the top-level cumulative times, and self time grouped by top-level package (ms)."""
    total = 0
    by_package: Counter[str] = Counter()
    modules = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line.split(":", 1)[1].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        modules += 1
        if depth == 0:
            total += int(cumulative)
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


def measure(envs: peers.Environments) -> dict[str, Any]:
    full, done_path, floor = [], [], []
    python, azprov = str(envs.azprov_python), str(envs.azprov_bin)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(REPEAT):
            with FakeFabric(computer_name=run.COMPUTER_NAME, vm_id=run.VM_UUID) as fab:
                work = Path(tmp) / f"w{i}"
                config = run.azprov_config(work, fab.url)
                full.append(importtime([python, azprov, "--config", str(config)]))
                done_path.append(importtime([python, azprov, "--config", str(config)]))
            floor.append(importtime([python, "-c", "import requests, lxml.etree, transitions"]))
    gc_runs = []
    for _ in range(REPEAT):
        out = subprocess.run([python, "-c", GC_PROBE], capture_output=True, text=True, check=True).stdout.split()
        gc_runs.append({"imports_ms": float(out[0]) * 1000, "gc_ms": float(out[1]) * 1000, "collections": int(out[2])})
    return {"full_run": median_run(full), "done_run": median_run(done_path), "import_floor": median_run(floor),
            "gc_during_floor_imports": {k: statistics.median(r[k] for r in gc_runs) for k in gc_runs[0]}}


def render(raw_dir: Path) -> list[str]:
    found = {p.stem.removeprefix("importtime-"): json.loads(p.read_text())
             for p in sorted(raw_dir.glob("importtime-*.json"))}
    if not found:
        return []
    labels = sorted(found, key=lambda k: (k != "before", k))
    lines = ["## Start-up: `python -X importtime` (bench/importtime.py)", "",
             "Sum of top-level cumulative import times (ms; median of 7 runs, importtime's own overhead included):",
             "", "| measurement | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for key, title in (("full_run", "full provisioning run"), ("done_run", "later boot, DONE record"),
                       ("import_floor", "`import requests, lxml.etree, transitions`")):
        cells = [f"{found[lb][key]['total_ms']:.1f} ({found[lb][key]['modules']} modules)" for lb in labels]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    cells = [f"{found[lb]['gc_during_floor_imports']['gc_ms']:.1f} ms in "
             f"{found[lb]['gc_during_floor_imports']['collections']:.0f} collections" for lb in labels]
    lines += ["| gc during the floor's imports | " + " | ".join(cells) + " |", ""]
    for lb in labels:
        for key in ("full_run", "done_run"):
            top = ", ".join(f"{name} {ms:.1f}" for name, ms in found[lb][key]["top"][:10])
            lines.append(f"- {lb}, {key.replace('_', ' ')}: self time by package (ms): {top}")
        if "commit" in found[lb]:
            lines.append(f"- {lb}: commit {found[lb]['commit']}, {found[lb]['date']}")
    return lines + [""]


def main() -> int:
    label = sys.argv[1] if len(sys.argv) > 1 else "current"
    envs = peers.prepare(HERE / "cache", with_peers=False)
    result = measure(envs)
    result.update(commit=run.git_commit(), date=run.time.strftime("%Y-%m-%d %H:%M UTC", run.time.gmtime()))
    out = HERE / "raw" / f"importtime-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(render(out.parent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
