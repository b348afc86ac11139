"""The benchmark harness: azprov against its peers, on the same loopback fake fabric, in one run.

    python bench/run.py                      # every scenario, 9 runs each, all agents → bench/RESULTS.md
    python bench/run.py -s P2 -s P4 -n 15    # a subset (other scenarios' raw JSON is kept and re-rendered)
    python bench/run.py --quick              # azprov alone, one cold run: the smoke test's entry point

Each run starts a fresh `tests/fakefabric.FakeFabric` in this process (127.0.0.1 only), starts the agent as a
child process and waits for it with `os.wait4` (wall and CPU time). Times are `time.monotonic()`
(CLOCK_MONOTONIC, shared by all processes), so the fake's "t" stamps compare directly with the moment the
child was spawned. Runs interleave the agents (run 1 of each, then run 2 of each ...) so drift in the
machine's load spreads over all of them; every agent gets one unrecorded warm-up run per scenario.

Peak RSS comes from `/usr/bin/time -f %M`, never from this process's `wait4`: a child forked from this
~30 MiB interpreter carries the parent's high-water mark through exec, so wait4 would read ~27 MiB for
`python -c pass`. GNU time forks the agent from its own small process. In the timing-critical scenarios
(P2, P4) the timed runs are spawned directly and a few extra runs through `time` give the RSS; elsewhere
every run goes through `time` (its ~1 ms of extra start-up is noise against those seconds). A self-check
stops the bench when `python -c pass` reads more than 12 MiB.

The measured runs happen inside a private network namespace with only loopback up (`unshare --net`), so no
agent, peer or the article's script can send a packet off this machine whatever it was configured with.
See bench/README.md for what each scenario means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional  # Optional: the Target alias is evaluated at run time, before 3.10 has `X | None`

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

import netns  # noqa: E402
import peers  # noqa: E402
from fakefabric import FakeFabric  # noqa: E402

VM_UUID = "7f3b1c2a-9d4e-4f60-8a1b-2c3d4e5f6a7b"
COMPUTER_NAME = "bench-vm-01"
GOLDEN = 0.6180339887498949  # low-discrepancy spread of the P1 listen delays over one second
# Peers that give up drop their connection mid-request; the fake's server would print each traceback.
socketserver.BaseServer.handle_error = lambda self, request, client_address: None  # type: ignore[method-assign]


# ---- scenarios ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    agents: tuple[str, ...]
    metric: str  # the headline metric: ready_s, after_route_s, after_listen_s or wall_s
    target: str
    script: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    cap_s: float = 30.0  # kill the agent after this long: a peer may retry for twenty minutes
    listen_delay: Callable[[int], float] | None = None
    # The route to the fabric appears this long after the spawn, as when DHCP completes: loopback's routes
    # are gone until then (connects fail with ENETUNREACH, no packet sent), with the fake already listening.
    # The benchmark's own namespace holds nothing else, so removing them touches nothing outside.
    route_delay: Callable[[int], float] | None = None
    provisioned: bool = False  # P4: run against a DONE record
    # P2's target is a ratio within a few percent of 1, and this shared VM's speed drifts by a third between
    # minutes: more interleaved runs than the default, so the medians are not one busy spell's.
    min_runs: int = 0
    # Wall times of a few ms are compared here: timed runs are spawned directly, RSS comes from extra runs.
    timing_critical: bool = False


ARTICLE = ("article", "seed_rewrite")
PEERS = (*ARTICLE, "cloudinit", "waagent")
FLOORS = ("python_pass", "import_floor")
TIME = "/usr/bin/time"
RSS_RUNS = 3  # runs through /usr/bin/time per agent in a timing-critical scenario (RSS varies by < 1 %)
PASS_RSS_LIMIT_KIB = 12 * 1024
# Earlier runs named our rewrite of the article's unit "seed"; the comparison with them maps the old name.
RENAMED = {"seed": "seed_rewrite"}

SCENARIOS = {s.key: s for s in [
    Scenario("P1", "route to the fabric appears late (loopback up after 2.0-3.0 s)", ("azprov", *PEERS),
             "after_route_s", "Ready accepted <= 50 ms after the route appears", cap_s=30.0,
             route_delay=lambda i: 2.0 + ((i * GOLDEN) % 1.0)),
    Scenario("P1r", "fabric refuses, then listens (after 2.0-3.0 s)", ("azprov", *PEERS), "after_listen_s",
             "Ready accepted <= 1.5 s after the listen (polled gently meanwhile)", cap_s=30.0,
             listen_delay=lambda i: 2.0 + ((i * GOLDEN) % 1.0)),
    Scenario("P2", "cold run, network up", ("azprov", *PEERS, *FLOORS), "wall_s",
             "start -> exit <= 1.2 x import floor; <= 0.8 x cloud-init", min_runs=21, timing_critical=True),
    Scenario("P3a", "goal state 500 x3 (no Retry-After)", ("azprov", *PEERS), "ready_s", "Ready <= 1.5 s",
             script={"goalstate": [{"status": 500}] * 3}),
    Scenario("P3b", "goal state 503 x3, Retry-After: 1", ("azprov", *PEERS), "ready_s", "Ready <= 3.5 s",
             script={"goalstate": [{"status": 503, "headers": {"Retry-After": "1"}}] * 3}),
    Scenario("P3c", "health 410 once, incarnation bumped", ("azprov", *PEERS), "ready_s", "Ready <= 0.5 s",
             script={"health": [{"action": "bump"}]}, cap_s=12.0),
    Scenario("P4", "later boot of a provisioned VM (DONE record)", ("azprov", "azprov_script", "python_pass"), "wall_s",
             "<= 3 x python -c pass", provisioned=True, timing_critical=True),
]}


# ---- agents ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Workdir:
    path: Path
    hostname_file: Path
    config: Path


def azprov_config(work: Path, url: str, imds_url: str | None = None, vm_uuid: str = VM_UUID) -> Path:
    """azprov pointed at the fake: loopback URLs, a temp root and state dir, the hostname written to a file.
    One fake serves both services unless `imds_url` names another (the fleet gives each VM two addresses)."""
    (work / "root" / "etc").mkdir(parents=True, exist_ok=True)
    (work / "product_uuid").write_text(vm_uuid.upper() + "\n")
    config = work / "azprov.toml"
    config.write_text(f"""
[fabric]
wireserver_url = "{url}"
imds_url = "{imds_url or url}"
[paths]
state_dir = "{work / 'state'}"
root = "{work / 'root'}"
[identity]
product_uuid_path = "{work / 'product_uuid'}"
efi_path = "{work / 'no-efi'}"
[hostname]
method = "file"
""")
    return config


def make_workdir(base: Path, agent: str, url: str) -> Workdir:
    work = Path(tempfile.mkdtemp(prefix=f"{agent}-", dir=base))
    ours = agent.startswith("azprov")
    config = azprov_config(work, url) if ours else work / "unused"
    hostname_file = work / "root" / "etc" / "hostname" if ours else work / "hostname"
    return Workdir(work, hostname_file, config)


def argv_for(agent: str, envs: peers.Environments, url: str, work: Workdir) -> list[str]:
    drivers = HERE / "drivers"
    common = ["--wireserver", url, "--imds", url, "--hostname-file", str(work.hostname_file)]
    if agent == "azprov":
        return [str(envs.azprov_bin), "--config", str(work.config)]
    if agent == "azprov_before":
        if envs.before_bin is None:
            raise ValueError("azprov_before needs --before-venv")
        return [str(envs.before_bin), "--config", str(work.config)]
    if agent == "azprov_script":
        return [str(envs.azprov_python), str(HERE / "azprov_script.py"), "--config", str(work.config)]
    if agent == "article":  # the article's script, one line changed: the WireServer address is argv[1]
        return [str(envs.azprov_python), str(HERE / "article" / "ready.py"), url.split("://", 1)[1]]
    if agent == "seed_rewrite":
        return [str(envs.peers_python), str(drivers / "seed_driver.py"), *common]
    if agent == "cloudinit":
        return [str(envs.peers_python), str(drivers / "cloudinit_driver.py"), *common,
                "--peer-path", str(envs.cloudinit_path)]
    if agent == "waagent":
        return [str(envs.peers_python), str(drivers / "waagent_driver.py"), *common,
                "--peer-path", str(envs.waagent_path)]
    if agent == "python_pass":
        return [str(envs.azprov_python), "-c", "pass"]
    if agent == "import_floor":
        return [str(envs.azprov_python), "-c", "import requests, lxml.etree, transitions"]
    raise ValueError(agent)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "pythonpath")}
    env["no_proxy"] = "*"
    env["AZPROV_CONFIG_DIR"] = "/nonexistent/azprov-bench"  # this machine's /etc/azprov must not leak in
    env["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"  # no agent runs with setuptools' distutils shim (none is installed)
    return env


# ---- one measured run --------------------------------------------------------------------------------------

def spawn_and_wait(argv: list[str], cap_s: float, log_path: Path,
                   with_rss: bool = True) -> tuple[float, float, int, int | None, bool, float | None]:
    """Spawn, wait with os.wait4, kill at the cap. With `with_rss` the agent runs under /usr/bin/time, whose
    %M is the agent's own peak RSS; wait4's CPU time then includes time's own (well under a millisecond).
    Returns (spawn time, exit time, exit status, peak RSS KiB or None, killed, CPU seconds user+system)."""
    killed = threading.Event()
    rss_file = log_path.with_suffix(".rss")
    if with_rss:
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    with open(log_path, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), start_new_session=True)

        def kill() -> None:
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(cap_s, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        t_exit = time.monotonic()
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    rss = None
    if with_rss and not killed.is_set():
        try:  # time writes "Command exited with non-zero status N" before %M when the agent failed
            rss = int(rss_file.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            rss = None
    cpu: float | None = usage.ru_utime + usage.ru_stime
    if with_rss and killed.is_set():
        cpu = None  # the agent died with time, unreaped: wait4 saw only time's own CPU
    return t0, t_exit, proc.returncode, rss, killed.is_set(), cpu


@contextmanager
def fabric_for(scenario: Scenario, run: int) -> Iterator[tuple[FakeFabric, dict[str, float]]]:
    fab = FakeFabric(computer_name=COMPUTER_NAME, vm_id=VM_UUID,
                     script={k: list(v) for k, v in scenario.script.items()})
    marks: dict[str, float] = {}
    timer = None
    if scenario.route_delay is not None:
        fab.start()  # bound while 127.0.0.1 is still local: the socket outlives the route
        loopback_routes("del")
        delay = scenario.route_delay(run)

        def route() -> None:
            marks["route"] = time.monotonic()  # just before `ip` runs: "after the route" is an upper bound
            loopback_routes("replace")

        marks["delay"] = delay
        timer = threading.Timer(delay, route)
        timer.start()
    elif scenario.listen_delay is None:
        fab.start()
    else:
        fab.reserve_port()
        delay = scenario.listen_delay(run)

        def listen() -> None:
            marks["listen"] = time.monotonic()  # just before bind+listen: "after the listen" is an upper bound
            fab.start()

        marks["delay"] = delay
        timer = threading.Timer(delay, listen)
        timer.start()
    try:
        yield fab, marks
    finally:
        if timer is not None:
            timer.cancel()
        if scenario.route_delay is not None:
            loopback_routes("replace")
        fab.stop()


def loopback_routes(verb: str) -> None:
    """Remove ("del") or restore ("replace") loopback's local routes, 127.0.0.1 first. Only in the benchmark's
    private namespace. Taking the link down would not do: its address's route stays, and connects then
    time out (a dropped SYN) instead of failing at once as they do before a lease."""
    netns.assert_inside()
    routes = ["local 127.0.0.1 dev lo table local src 127.0.0.1", "local 127.0.0.0/8 dev lo table local src 127.0.0.1"]
    if verb == "del":
        routes.reverse()
    script = "".join(f"route {verb} {r}\n" for r in routes)
    subprocess.run([shutil.which("ip") or "/usr/sbin/ip", "-force", "-batch", "-"], input=script, text=True,
                   check=verb == "replace", stderr=subprocess.DEVNULL)


def measure(scenario: Scenario, agent: str, run: int, envs: peers.Environments, base: Path,
            provisioned: dict[str, Path], rss_run: bool = False) -> dict[str, Any]:
    """One run. `rss_run`: a run through /usr/bin/time in a timing-critical scenario, kept only for its RSS."""
    with_rss = rss_run or not scenario.timing_critical
    with fabric_for(scenario, run) as (fab, marks):
        if scenario.provisioned and agent.startswith("azprov"):
            work = provisioned_workdir(base, envs, provisioned, fab.url)
        else:
            work = make_workdir(base, agent, fab.url)
        argv = argv_for(agent, envs, fab.url, work)
        t0, t_exit, code, rss, killed, cpu = spawn_and_wait(argv, scenario.cap_s, work.path / "output.log",
                                                            with_rss=with_rss)
        time.sleep(0.01)  # let the fake's handler thread finish logging the last answer
        readies = fab.ready_reports()
        routes: dict[str, int] = {}
        for entry in fab.log:
            routes[entry["route"]] = routes.get(entry["route"], 0) + 1
    ready_t = float(readies[0].get("t_answer", readies[0]["t"])) if readies else None
    result: dict[str, Any] = {
        "scenario": scenario.key, "agent": agent, "run": run, "exit": code, "killed_at_cap": killed,
        "wall_s": round(t_exit - t0, 4), "cpu_s": None if cpu is None else round(cpu, 4), "rss_kib": rss,
        "ready_s": round(ready_t - t0, 4) if ready_t is not None else None,
        "ready_count": len(readies), "requests": routes, "via_time": with_rss,
    }
    if rss_run:
        result["rss_only"] = True
    if "route" in marks:
        result["route_s"] = round(marks["route"] - t0, 4)
        result["after_route_s"] = round(ready_t - marks["route"], 4) if ready_t is not None else None
    if "listen" in marks:
        result["listen_s"] = round(marks["listen"] - t0, 4)
        result["after_listen_s"] = round(ready_t - marks["listen"], 4) if ready_t is not None else None
    if agent not in FLOORS:
        try:
            result["hostname"] = work.hostname_file.read_text().strip()
        except OSError:
            result["hostname"] = None
        tail = (work.path / "output.log").read_text(errors="replace")[-400:]
        result["output_tail"] = tail.replace(f"{REPO}/", "")  # paths relative to the repository
    return result


def provisioned_workdir(base: Path, envs: peers.Environments, cache: dict[str, Path], url: str) -> Workdir:
    """P4: a workdir whose record is DONE. Provisioned once (untimed); later runs only read it."""
    if "azprov" not in cache:
        work = make_workdir(base, "azprov", url)
        t0, _, code, _, _, _ = spawn_and_wait(argv_for("azprov", envs, url, work), 30.0, work.path / "setup.log",
                                              with_rss=False)
        if code != 0:
            raise RuntimeError(f"P4 setup run failed: {(work.path / 'setup.log').read_text()[-800:]}")
        cache["azprov"] = work.path
    work_path = cache["azprov"]
    # The same config file, untouched: a later boot of the same VM (it must not contact the fabric at all).
    return Workdir(work_path, work_path / "root" / "etc" / "hostname", work_path / "azprov.toml")


# ---- statistics and report ---------------------------------------------------------------------------------

def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(results: list[dict[str, Any]], scenario: Scenario) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for agent in scenario.agents:
        every = [r for r in results if r["agent"] == agent]
        rows = [r for r in every if not r.get("rss_only")]
        metrics = {m: summary([r[m] for r in rows if r.get(m) is not None])
                   for m in ("ready_s", "after_route_s", "after_listen_s", "wall_s", "cpu_s")}
        metrics["rss_kib"] = summary([r["rss_kib"] for r in every if r.get("rss_kib") is not None])
        out[agent] = {**metrics, "runs": len(rows), "ready_runs": sum(1 for r in rows if r["ready_count"]),
                      "exit_codes": sorted({r["exit"] for r in rows}), "killed": sum(r["killed_at_cap"] for r in rows)}
    # azprov's run i against agent's run i: the two ran within a second of each other, so a slow spell of
    # the machine weighs on both. A second view of the ratio, beside the ratio of the medians.
    ours = {r["run"]: r for r in results if r["agent"] == "azprov" and not r.get("rss_only")}
    for agent in scenario.agents:
        pairs = [ours[r["run"]][m] / r[m] for r in results for m in ("wall_s",)
                 if r["agent"] == agent and agent != "azprov" and r["run"] in ours and not r.get("rss_only")
                 and ours[r["run"]].get(m) and r.get(m)]
        if pairs:
            out[agent]["paired_wall_ratio"] = statistics.median(pairs)
    return out


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"


def paired(results: list[dict[str, Any]], num: str, den: str, metric: str) -> dict[str, float] | None:
    """Per-run ratios num/den: run i of one against run i of the other (they ran within seconds of each
    other). RSS pairs come from the runs that have an RSS, timings from the timed runs."""
    def rows(agent: str) -> dict[int, float]:
        keep = [r for r in results if r["agent"] == agent and r.get(metric)
                and (metric == "rss_kib" or not r.get("rss_only"))]
        return {r["run"]: float(r[metric]) for r in keep}

    a, b = rows(num), rows(den)
    return summary([a[i] / b[i] for i in sorted(a.keys() & b.keys())])


def spread(s: dict[str, float] | None, digits: int = 3) -> str:
    return "—" if not s else f"{s['min']:.{digits}g}–{s['max']:.{digits}g}"


def render_table(scenario: Scenario, raw: dict[str, Any]) -> list[str]:
    stats, results, metric = raw["summary"], raw["results"], scenario.metric
    ours = (stats.get("azprov", {}).get(metric) or {}).get("median")
    lines = [f"### {scenario.key}: {scenario.title}", "", f"Target: {scenario.target}. Metric: `{metric}` (ms).",
             "", "| agent | median | min | max | Ready in | exit | azprov ÷ agent | per-run ratios min–max "
             "| wall median | CPU median | peak RSS MiB (min–max) |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for agent in scenario.agents:
        s = stats[agent]
        m = s.get(metric)
        ratio = f"{ours / m['median']:.3g}" if ours is not None and m and m["median"] and agent != "azprov" else ""
        runs = spread(paired(results, "azprov", agent, metric)) if ratio else ""
        wall = (s.get("wall_s") or {}).get("median")
        cpu = (s.get("cpu_s") or {}).get("median")
        rss = s.get("rss_kib")
        rss_cell = f"{rss['median'] / 1024:.1f} ({rss['min'] / 1024:.1f}–{rss['max'] / 1024:.1f})" if rss else "—"
        ready = "n/a" if agent in FLOORS else f"{s['ready_runs']}/{s['runs']}"
        killed = f", {s['killed']} killed at {scenario.cap_s:.0f} s" if s["killed"] else ""
        cells = [ms(m[k]) if m else "—" for k in ("median", "min", "max")]
        lines.append(f"| {agent} | {' | '.join(cells)} | {ready} | {s['exit_codes']}{killed} | {ratio} | {runs} | "
                     f"{ms(wall)} | {ms(cpu)} | {rss_cell} |")
    return lines


def load_text(meta: dict[str, Any]) -> str:
    load = meta.get("load")
    if not load:
        return "host load not recorded"
    return (f"host load (1-min average, /proc/loadavg) {load['start']:.2f} at the start, "
            f"{load['max']:.2f} at most, {load['end']:.2f} at the end")


def read_raws(raw_dir: Path) -> dict[str, dict[str, Any]]:
    raws = {p.stem: json.loads(p.read_text()) for p in sorted(raw_dir.glob("P*.json"))}
    for key, raw in raws.items():  # earlier runs' agent names
        for r in raw["results"]:
            r["agent"] = RENAMED.get(r["agent"], r["agent"])
            if r.get("via_time") and r["killed_at_cap"]:
                r["cpu_s"] = None  # see spawn_and_wait
        agents = tuple(RENAMED.get(k, k) for k in raw["summary"])
        raw["summary"] = summarise(raw["results"], dataclasses.replace(SCENARIOS[key], agents=agents))
    return raws


def render(out_dir: Path) -> str:
    raws = read_raws(out_dir / "raw")
    previous = read_raws(out_dir / "raw" / "previous")
    lines = ["# azprov benchmark results", "",
             "Generated by `bench/run.py` (`make bench`) from the raw JSON in `bench/raw/`; see bench/README.md "
             "for what the scenarios mean and how times and memory are taken. All times in milliseconds. "
             "A ratio is azprov's median divided by the other agent's median, measured in the same run; beside "
             "it, the smallest and largest of the per-run ratios (azprov's run i ÷ the agent's run i).", ""]
    for raw in raws.values():
        meta = raw["meta"]
        lines.append(f"- {raw['scenario']}: {meta['date']}, {meta['runs']} runs, commit {meta['commit']}; "
                     f"{load_text(meta)}")
    metas = {json.dumps(r["meta"]["versions"], sort_keys=True) for r in raws.values()}
    if len(metas) == 1:
        versions = json.loads(metas.pop())
        venv = versions.pop("peers-venv", None)
        lines += ["", f"Interpreter (every agent, every venv): {versions.pop('python', 'unknown')}. "
                  "No agent runs with setuptools' distutils shim.",
                  "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
        if venv:
            lines.append(f"Peers' Python packages (bench/cache/peers-venv): {venv}")
        lines.append(f"Machine: {next(iter(raws.values()))['meta']['machine']}" if raws else "")
    lines.append("")
    lines += render_targets(raws, previous)
    for key, raw in raws.items():
        scenario = dataclasses.replace(SCENARIOS[key], agents=tuple(raw["summary"]))
        lines += render_table(scenario, raw) + [""]
    if "P2" in raws:
        lines += render_p5(raws["P2"]) + [""]
    lines += render_changes(raws, previous)
    import importtime  # here, not at the top: importtime imports this module

    lines += importtime.render(out_dir / "raw")
    lines += appendices()
    return "\n".join(lines) + "\n"


# The other benchmarks' tables, kept in their own files by their own scripts, gathered here so that
# bench/RESULTS.md holds every figure: bench/fleet.py, bench/reliability.py and tests/boot/run_boot.py --record.
APPENDICES = (
    (HERE / "RESULTS_fleet.md", None),
    (HERE / "RESULTS_reliability.md", None),
    (HERE / "RESULTS_boot.md", None),  # the boot comparison (`make bench-boot`), written up by hand
    (HERE.parent / "docs" / "boot-results.md",
     "## Real boot under QEMU (`make test-boot`, `tests/boot/run_boot.py --record`)"),
)


def appendices() -> list[str]:
    lines: list[str] = []
    for path, heading in APPENDICES:
        if path.exists():
            lines += [""] + ([heading, ""] if heading else []) + path.read_text().rstrip().splitlines()
    return lines


def _median(stats: dict[str, dict[str, Any]], agent: str, metric: str) -> float | None:
    return ((stats.get(agent) or {}).get(metric) or {}).get("median")


Target = tuple[str, str, Optional[float], Optional[dict[str, float]], float]  # key, what, value, per-run, limit


def targets(raws: dict[str, dict[str, Any]]) -> list[Target]:
    """Each target of the start-up work, from the medians, with the per-run spread of the same figure."""
    rows: list[Target] = []

    def ratio(key: str, metric: str, other: str, agent: str = "azprov") -> tuple[float | None, dict[str, float] | None]:
        stats = raws[key]["summary"]
        ours, theirs = _median(stats, agent, metric), _median(stats, other, metric)
        value = ours / theirs if ours is not None and theirs else None
        return value, paired(raws[key]["results"], agent, other, metric)

    def alone(key: str, metric: str) -> tuple[float | None, dict[str, float] | None]:
        return _median(raws[key]["summary"], "azprov", metric), raws[key]["summary"].get("azprov", {}).get(metric)

    if "P1" in raws:
        rows.append(("P1", "Ready after the route appears, median (s)", *alone("P1", "after_route_s"), 0.050))
    if "P1r" in raws:
        rows.append(("P1r", "Ready after the listen, median (s)", *alone("P1r", "after_listen_s"), 1.5))
    if "P2" in raws:
        rows += [("P2", "start→exit ÷ import floor (wall)", *ratio("P2", "wall_s", "import_floor"), 1.2),
                 ("P2", "start→exit ÷ import floor (CPU)", *ratio("P2", "cpu_s", "import_floor"), 1.2),
                 ("P2", "start→exit ÷ cloud-init (wall)", *ratio("P2", "wall_s", "cloudinit"), 0.8),
                 ("P2", "start→exit ÷ cloud-init (CPU)", *ratio("P2", "cpu_s", "cloudinit"), 0.8)]
    if "P2" in raws:  # for comparison: no target
        for other, name in (("waagent", "WALinuxAgent"), ("article", "the article's script"),
                            ("seed_rewrite", "our rewrite of the article's unit")):
            for metric, label in (("wall_s", "wall"), ("cpu_s", "CPU")):
                rows.append(("P2", f"start→exit ÷ {name} ({label})", *ratio("P2", metric, other), float("inf")))
    for key, limit in (("P3a", 1.5), ("P3b", 3.5), ("P3c", 0.5)):
        if key in raws:
            rows.append((key, "start→Ready, median (s)", *alone(key, "ready_s"), limit))
    if "P4" in raws:
        rows += [("P4", "pip console script ÷ python -c pass (wall)", *ratio("P4", "wall_s", "python_pass"), 3.0),
                 ("P4", "pip console script ÷ python -c pass (CPU)", *ratio("P4", "cpu_s", "python_pass"), 3.0),
                 ("P4", "plain launcher (make install ships it) ÷ python -c pass (wall)",
                  *ratio("P4", "wall_s", "python_pass", "azprov_script"), 3.0),
                 ("P4", "plain launcher (make install ships it) ÷ python -c pass (CPU)",
                  *ratio("P4", "cpu_s", "python_pass", "azprov_script"), 3.0)]
    if "P2" in raws:
        rows += [("P5", "peak RSS ÷ import floor", *ratio("P2", "rss_kib", "import_floor"), 1.1),
                 ("P5", "peak RSS ÷ the article's script", *ratio("P2", "rss_kib", "article"), float("inf"))]
    return rows


def render_targets(raws: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> list[str]:
    before = {(k, w): (v, s) for k, w, v, s, _ in targets(previous)} if previous else {}
    lines = ["## Targets, from the medians below", "",
             "Per-run min–max: the same figure computed run by run (for a ratio: azprov's run i ÷ the other's "
             "run i). Previous: the run before this one (bench/raw/previous/); **moved** marks a figure whose new "
             "value lies outside the previous run's per-run range.", "",
             "| | measure | azprov | per-run min–max | target | met | previous (min–max) | |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for key, what, value, runs, limit in targets(raws):
        shown = "—" if value is None else f"{value:.3f}"
        met = "—" if value is None or limit == float("inf") else ("yes" if value <= limit else "**no**")
        bound = "(for comparison)" if limit == float("inf") else f"≤ {limit:g}"
        old, old_runs = before.get((key, what), (None, None))
        moved = ""
        if value is not None and old_runs is not None and not old_runs["min"] <= value <= old_runs["max"]:
            moved = "**moved**"
        old_cell = "—" if old is None else f"{old:.3f} ({spread(old_runs)})"
        lines.append(f"| {key} | {what} | {shown} | {spread(runs)} | {bound} | {met} | {old_cell} | {moved} |")
    return lines + [""]


def render_p5(raw: dict[str, Any]) -> list[str]:
    stats = raw["summary"]
    floor = (stats.get("import_floor", {}).get("rss_kib") or {}).get("median")
    lines = ["### P5: peak RSS of a full run (from the P2 scenario, `/usr/bin/time -f %M`)", "",
             "Target: azprov <= 1.1 x the import floor (`python -c \"import requests, lxml.etree, transitions\"`).",
             f"Self-check: `python -c pass` must read <= {PASS_RSS_LIMIT_KIB // 1024} MiB, else the bench stops.",
             "", "| agent | median MiB | min | max | ÷ import floor | per-run ratios min–max |",
             "|---|---:|---:|---:|---:|---:|"]
    for agent, s in stats.items():
        r = s.get("rss_kib")
        if not r:
            continue
        ratio = f"{r['median'] / floor:.2f}" if floor else ""
        runs = spread(paired(raw["results"], agent, "import_floor", "rss_kib")) if floor else ""
        mib = [f"{r[k] / 1024:.1f}" for k in ("median", "min", "max")]
        lines.append(f"| {agent} | {' | '.join(mib)} | {ratio} | {runs} |")
    return lines


def render_changes(raws: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> list[str]:
    """Every per-agent median that moved beyond the previous run's min–max (headline metric, CPU, RSS)."""
    if not previous:
        return []
    rows = []
    for key, raw in raws.items():
        old = previous.get(key)
        if old is None:
            continue
        for agent, stats in raw["summary"].items():
            for metric in dict.fromkeys((SCENARIOS[key].metric, "cpu_s", "rss_kib")):
                new_s, old_s = stats.get(metric), (old["summary"].get(agent) or {}).get(metric)
                if not new_s or not old_s or old_s["min"] <= new_s["median"] <= old_s["max"]:
                    continue
                unit, k = ("MiB", 1 / 1024) if metric == "rss_kib" else ("ms", 1000.0)
                rows.append(f"| {key} | {agent} | {metric} ({unit}) | {old_s['median'] * k:.1f} "
                            f"({old_s['min'] * k:.1f}–{old_s['max'] * k:.1f}) | {new_s['median'] * k:.1f} "
                            f"({new_s['min'] * k:.1f}–{new_s['max'] * k:.1f}) | "
                            f"{(new_s['median'] / old_s['median'] - 1) * 100:+.0f} % |")
    dates = sorted({r["meta"]["date"] for r in previous.values()})
    lines = ["## Moved since the previous run", "",
             f"Medians outside the previous run's min–max (previous: {dates[0]} – {dates[-1]}; "
             f"{next(iter(previous.values()))['meta']['versions'].get('python', '?')}). The previous run measured "
             "RSS with os.wait4 from the harness (the parent's high-water mark included), ran the peers with "
             "setuptools' distutils shim, and named our rewrite of the article's unit `seed`.", ""]
    if not rows:
        return lines + ["Nothing moved beyond its spread.", ""]
    return lines + ["| scenario | agent | figure | previous median (min–max) | now (min–max) | change |",
                    "|---|---|---|---:|---:|---:|", *rows, ""]


# ---- driver ------------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class LoadSampler:
    """/proc/loadavg's 1-minute average at the start, every 2 s, and at the end of a scenario."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> float:
        return float(Path("/proc/loadavg").read_text().split()[0])

    def _run(self) -> None:
        while True:
            self.samples.append(self.read())
            if self._stop.wait(2.0):
                break

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.read())

    def summary(self) -> dict[str, float]:
        return {"start": self.samples[0], "end": self.samples[-1], "max": max(self.samples),
                "median": statistics.median(self.samples), "n": len(self.samples)}


def run_scenario(scenario: Scenario, agents: tuple[str, ...], runs: int, envs: peers.Environments,
                 base: Path, warmup: bool, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    provisioned: dict[str, Path] = {}
    if warmup:
        for agent in agents:
            measure(scenario, agent, 0, envs, base, provisioned)
    for i in range(runs):
        for agent in agents:
            r = measure(scenario, agent, i, envs, base, provisioned)
            results.append(r)
            progress(f"{scenario.key} run {i + 1}/{runs} {agent}: ready={ms(r['ready_s'])} "
                     f"after_route={ms(r.get('after_route_s'))} after_listen={ms(r.get('after_listen_s'))} "
                     f"wall={ms(r['wall_s'])} exit={r['exit']}")
    if scenario.timing_critical:
        for i in range(RSS_RUNS):
            for agent in agents:
                r = measure(scenario, agent, i, envs, base, provisioned, rss_run=True)
                results.append(r)
                progress(f"{scenario.key} RSS run {i + 1}/{RSS_RUNS} {agent}: {r['rss_kib']} KiB")
    return results


def ensure_time() -> None:
    """GNU time gives each agent's own peak RSS; installed the way the repository's scripts install tools."""
    if Path(TIME).exists():
        return
    if os.geteuid() != 0:
        raise SystemExit(f"benchmark: {TIME} is missing; install the Debian package `time` (apt-get install time)")
    for cmd in (["apt-get", "install", "-y", "-qq", "time"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "time"]):
        done = subprocess.run(cmd, capture_output=True, check=False)
        if cmd[1] == "install" and done.returncode == 0:
            return
    raise SystemExit(f"benchmark: could not install {TIME} (apt-get install time)")


def rss_self_check(envs: peers.Environments, base: Path) -> int:
    """`python -c pass` through the same RSS path; the bench stops if it reads more than the limit (a reading
    of the harness's own memory, as os.wait4 on a child of this process gives, is ~27 MiB)."""
    readings = []
    for _ in range(3):
        work = make_workdir(base, "python_pass", "http://127.0.0.1:9")
        _, _, code, rss, _, _ = spawn_and_wait(argv_for("python_pass", envs, "http://127.0.0.1:9", work), 30.0,
                                               work.path / "output.log")
        if code != 0 or rss is None:
            raise SystemExit(f"benchmark: RSS self-check run failed (exit {code})")
        readings.append(rss)
    median = int(statistics.median(readings))
    if median > PASS_RSS_LIMIT_KIB:
        raise SystemExit(f"benchmark: `python -c pass` reads {median / 1024:.1f} MiB peak RSS (limit "
                         f"{PASS_RSS_LIMIT_KIB // 1024} MiB): the RSS measurement is counting something else")
    return median


def rotate(out: Path, key: str) -> None:
    """The raw JSON of the run before this one moves to raw/previous/, for the 'moved' comparison."""
    current = out / "raw" / f"{key}.json"
    if current.exists():
        (out / "raw" / "previous").mkdir(exist_ok=True)
        current.replace(out / "raw" / "previous" / f"{key}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    p.add_argument("-n", "--runs", type=int, default=9)
    p.add_argument("-a", "--agent", action="append", help="only these agents (default: each scenario's)")
    p.add_argument("--cache", type=Path, default=HERE / "cache", help="peers, venvs (default bench/cache)")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and raw/ go (default bench/)")
    p.add_argument("--before-venv", type=Path, help="a venv with azprov as it was before a change: adds the "
                   "agent azprov_before next to azprov in every scenario, measured in the same runs")
    p.add_argument("--no-rotate", action="store_true",
                   help="keep raw/previous/ as it is (default: this run's old raw JSON becomes 'previous')")
    p.add_argument("--render", action="store_true", help="only re-render RESULTS.md from the raw JSON")
    p.add_argument("--quick", "--smoke", action="store_true",
                   help="azprov alone, one P2 run, no warm-up, no peers; prints JSON, exits 1 unless Ready")
    args = p.parse_args(argv)

    if args.render:
        (args.out / "RESULTS.md").write_text(render(args.out))
        return 0
    if args.quick:
        ensure_time()
        envs = peers.current(Path(sys.executable))
        with tempfile.TemporaryDirectory(prefix="azprov-bench-") as tmp:
            r = measure(dataclasses.replace(SCENARIOS["P2"], timing_critical=False), "azprov", 0, envs,
                        Path(tmp), {})
        print(json.dumps(r, indent=2))
        ok = r["exit"] == 0 and r["ready_count"] == 1 and r["hostname"] == COMPUTER_NAME
        return 0 if ok else 1

    keys = args.scenario or list(SCENARIOS)
    needs_peers = any(a in PEERS for k in keys for a in (args.agent or SCENARIOS[k].agents))
    if not netns.inside():
        ensure_time()
        peers.prepare(args.cache, with_peers=needs_peers)  # downloads and installs need the network
        return netns.reexec_inside(__file__, sys.argv[1:] if argv is None else argv)
    netns.assert_inside()
    envs = peers.prepare(args.cache, with_peers=needs_peers)
    if args.before_venv is not None:
        envs = dataclasses.replace(envs, before_bin=args.before_venv / "bin" / "azprov")
    with tempfile.TemporaryDirectory(prefix="azprov-bench-") as tmp:
        pass_rss = rss_self_check(envs, Path(tmp))
    print(f"RSS self-check: python -c pass {pass_rss / 1024:.1f} MiB", file=sys.stderr)
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    for key in keys:
        scenario = SCENARIOS[key]
        expanded: list[str] = []
        for agent in scenario.agents:
            expanded.append(agent)
            if agent == "azprov" and args.before_venv is not None:
                expanded.append("azprov_before")
        agents = tuple(a for a in expanded if not args.agent or a in args.agent or a == "azprov_before")
        with tempfile.TemporaryDirectory(prefix="azprov-bench-") as tmp, LoadSampler() as load:
            runs = max(args.runs, scenario.min_runs)
            results = run_scenario(scenario, agents, runs, envs, Path(tmp), warmup=True,
                                   progress=lambda line: print(line, file=sys.stderr, flush=True))
        scenario = dataclasses.replace(scenario, agents=agents)
        stats = summarise(results, scenario)
        pass_rss = (stats.get("python_pass", {}).get("rss_kib") or {}).get("median")
        if pass_rss and pass_rss > PASS_RSS_LIMIT_KIB:
            raise SystemExit(f"benchmark: {key}: `python -c pass` read {pass_rss / 1024:.1f} MiB peak RSS")
        raw = {"scenario": key, "summary": stats, "results": results,
               "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs,
                        "commit": git_commit(), "versions": envs.versions, "load": load.summary(),
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.release()}"}}
        if not args.no_rotate:
            rotate(args.out, key)
        tmp_path = args.out / "raw" / f"{key}.json.tmp"
        tmp_path.write_text(json.dumps(raw, indent=1) + "\n")
        tmp_path.replace(args.out / "raw" / f"{key}.json")
    (args.out / "RESULTS.md").write_text(render(args.out))
    print(f"wrote {args.out / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
