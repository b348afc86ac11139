"""The fleet benchmark: N agents released together against one fake fabric (`make bench-fleet`).

    python bench/fleet.py                        # N = 200 (fewer when memory is short), every scenario, all agents
    python bench/fleet.py -n 20 -s ws50 -a azprov    # a small fleet, one scenario, one agent
    python bench/fleet.py --smoke                # N = 3, azprov, no throttle: the smoke test's entry point

Every VM has its own WireServer address (127.1.y.z) and IMDS address (127.2.y.z) on port 80 and its own ids
(vmId, ContainerId, InstanceId, computer name); the fake answers each address with that VM's goal state and
IMDS document and accepts a health report only when it names that VM's incarnation, container and instance.
One asyncio server in this process serves all of them. Each service has one global token bucket (capacity:
a fifth of a second's worth): a WireServer request without a token gets 503 with `Retry-After: 1`, an IMDS
one 429 without Retry-After.

The agents are started as `sh` processes blocked on one pipe; closing the pipe releases them all at once
(the release is "spawn" below), and each then execs its agent. One fleet is one agent type: azprov, or
cloud-init's or WALinuxAgent's ready path (the drivers of `make bench`). Everything runs inside a private
network namespace with only loopback up, so nothing can leave the machine; its TCP counters
(/proc/net/snmp ActiveOpens, sampled every 100 ms) count connection attempts, refused ones included.

Results: bench/raw/fleet.json and bench/RESULTS_fleet.md, which bench/run.py appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import netns  # noqa: E402
import peers  # noqa: E402
import run  # noqa: E402
from fakefabric import GOAL_STATE, VERSIONS, _health_fields, imds_answer, route_of  # noqa: E402

PORT = 80
WIRE, IMDS = "wireserver", "imds"
AGENTS = ("azprov", "cloudinit", "waagent")
MIB_PER_AGENT = 50  # one agent's peak RSS (~33 MiB) with a margin for its sh, page cache and the fake's log


@dataclasses.dataclass(frozen=True)
class FleetScenario:
    key: str
    title: str
    wire_rate: float | None = None  # token-bucket rate (requests/s) of the WireServer, None: no throttle
    imds_rate: float | None = None
    refuse_s: float = 0.0  # the WireServer listens only after this long (connections refused until then)
    cap_s: float = 150.0  # after the release: agents still running then are killed and count as never Ready


SCENARIOS = {s.key: s for s in [
    FleetScenario("none", "no throttle"),
    FleetScenario("ws50", "WireServer 50 req/s (503, Retry-After: 1)", wire_rate=50.0, cap_s=180.0),
    FleetScenario("imds20", "IMDS 20 req/s (429, no Retry-After)", imds_rate=20.0, cap_s=180.0),
    FleetScenario("refuse30", "WireServer refuses connections for 30 s, then listens", refuse_s=30.0, cap_s=150.0),
    FleetScenario("refuse45", "WireServer refuses connections for 45 s, then listens", refuse_s=45.0, cap_s=165.0),
]}
DEFAULT_SCENARIOS = ("none", "ws50", "imds20", "refuse30", "refuse45")


@dataclasses.dataclass(frozen=True)
class VM:
    index: int
    wire: str
    imds: str
    vm_id: str
    container_id: str
    instance_id: str
    name: str

    @staticmethod
    def make(i: int) -> VM:
        y, z = divmod(i, 250)
        return VM(i, f"127.1.{y}.{z + 1}", f"127.2.{y}.{z + 1}", f"7f3b1c2a-9d4e-4f60-8a1b-{i:012x}",
                  f"c6d5526c-5ac2-4200-b6e2-{i:012x}", f"b61f93d0-e1ed-40b2-b067-{i:012x}.MachineRole_IN_{i}",
                  f"fleet-vm-{i:03d}")

    def goal_state(self) -> bytes:
        return GOAL_STATE.format(incarnation="1", container_id=self.container_id,
                                 instance_id=self.instance_id).encode()

    def imds_document(self) -> dict[str, Any]:
        return {"compute": {"name": self.name, "vmId": self.vm_id, "location": "westeurope",
                            "osProfile": {"computerName": self.name, "adminUsername": "azureuser",
                                          "disablePasswordAuthentication": "true"}, "publicKeys": []},
                "network": {"interface": []}}


class TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 5)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FleetFabric:
    """One asyncio loop (its own thread) serving every VM's WireServer and IMDS address."""

    def __init__(self, vms: list[VM], scenario: FleetScenario) -> None:
        self.vms = vms
        self.by_address = {vm.wire: (vm, WIRE) for vm in vms} | {vm.imds: (vm, IMDS) for vm in vms}
        self.buckets = {WIRE: TokenBucket(scenario.wire_rate) if scenario.wire_rate else None,
                        IMDS: TokenBucket(scenario.imds_rate) if scenario.imds_rate else None}
        self.log: list[dict[str, Any]] = []  # appended in the loop thread only; read after stop()
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.AbstractServer] = []
        self.wire_up_at: float | None = None  # the first WireServer listener's bind
        self.listen_at: dict[int, float] = {}  # each VM's WireServer listen()
        self.wire_socks: list[tuple[VM, socket.socket]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self, wire: bool) -> None:
        self._thread.start()
        self.call(self._listen_imds())
        # The WireServer sockets are bound now and listen later: a connect to a bound socket that does not
        # listen is refused, and listen() on 200 sockets takes microseconds even when the agents starve this
        # process of CPU (creating 200 asyncio servers at that moment took seconds to a minute).
        for vm in self.vms:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((vm.wire, PORT))
            sock.setblocking(False)
            self.wire_socks.append((vm, sock))
        if wire:
            self.listen_wire()

    def listen_wire(self) -> None:
        for vm, sock in self.wire_socks:
            self.listen_at[vm.index] = time.monotonic()  # just before listen(): Ready after it is an upper bound
            sock.listen(64)
        self.wire_up_at = min(self.listen_at.values())
        self.call(self._serve_wire(), timeout=None)

    async def _serve_wire(self) -> None:
        for _, sock in self.wire_socks:
            self.servers.append(await asyncio.start_server(self._serve, sock=sock))

    def call(self, coro: Any, timeout: float | None = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def stop(self) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        for _, sock in self.wire_socks:  # those that never listened; closing twice is harmless
            sock.close()

    async def _listen_imds(self) -> None:
        for vm in self.vms:
            self.servers.append(await asyncio.start_server(self._serve, vm.imds, PORT, reuse_address=True,
                                                           backlog=64))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        vm, service = self.by_address[writer.get_extra_info("sockname")[0]]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length") or 0)
                body = (await reader.readexactly(length)).decode("utf-8", "replace") if length else ""
                status, payload, extra = self._answer(vm, service, method, path, headers, body)
                out = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Length: {len(payload)}",
                       *extra]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _answer(self, vm: VM, service: str, method: str, path: str, headers: dict[str, str],
                body: str) -> tuple[int, bytes, list[str]]:
        now = time.monotonic()
        route = route_of(method, path)
        entry: dict[str, Any] = {"t": now, "vm": vm.index, "service": service, "route": route, "throttled": False}
        self.log.append(entry)
        bucket = self.buckets[service]
        if bucket is not None and not bucket.take(now):
            entry.update(throttled=True)
            if service == WIRE:
                entry["status"] = 503
                return 503, b"throttled", ["Retry-After: 1", "Content-Type: text/plain"]
            entry["status"] = 429
            return 429, b'{"error": "Too many requests"}', ["Content-Type: application/json"]
        status, payload, content_type = 404, b"not found", "text/plain"
        if service == WIRE and route == "goalstate":
            status, payload = (200, vm.goal_state()) if headers.get("x-ms-version") == "2012-11-30" else (400, b"")
            content_type = "text/xml; charset=utf-8"
        elif service == WIRE and route == "versions":
            status, payload, content_type = 200, VERSIONS.encode(), "text/xml; charset=utf-8"
        elif service == WIRE and route == "health":
            try:
                found = _health_fields(body)
            except Exception:
                found = {}
            if found.get("incarnation") != "1":
                status = 410 if found else 400
            elif found.get("container_id") == vm.container_id and found.get("instance_id") == vm.instance_id \
                    and found.get("state") in ("Ready", "NotReady"):
                status = 200
                entry["state"] = found["state"]
            else:
                status = 400
            payload = b""
        elif service == WIRE and route == "provisioning_health":
            status, payload = 200, b""
        elif service == IMDS and route == "imds":
            if (headers.get("metadata") or "").lower() != "true":
                status, payload = 400, b'{"error": "Required metadata header not specified"}'
            else:
                status, payload, content_type = imds_answer(vm.imds_document(), path)
        entry["status"] = status
        entry["t_answer"] = time.monotonic()
        return status, payload, [f"Content-Type: {content_type}"]


class ConnectCounter:
    """The namespace's TCP ActiveOpens (connect() calls, refused ones included), every 100 ms."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> int:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
        return int(lines[1][lines[0].index("ActiveOpens")])

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.read()))
            if self._stop.wait(0.1):
                break

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.read()))

    def between(self, t0: float, t1: float) -> int:
        before = [c for t, c in self.samples if t <= t0] or [self.samples[0][1]]
        upto = [c for t, c in self.samples if t <= t1] or [self.samples[0][1]]
        return upto[-1] - before[-1]

    def peak_1s(self) -> int:
        best, j = 0, 0
        for t, c in self.samples:
            while self.samples[j][0] < t - 1.0:
                j += 1
            best = max(best, c - self.samples[j][1])
        return best


# ---- agents ------------------------------------------------------------------------------------------------

def azprov_config(work: Path, vm: VM) -> Path:
    return run.azprov_config(work, f"http://{vm.wire}:{PORT}", f"http://{vm.imds}:{PORT}", vm.vm_id)


def argv_for(agent: str, envs: peers.Environments, vm: VM, work: Path) -> list[str]:
    if agent == "azprov":
        return [str(envs.azprov_bin), "--config", str(azprov_config(work, vm))]
    drivers = HERE / "drivers"
    common = ["--wireserver", f"http://{vm.wire}:{PORT}", "--imds", f"http://{vm.imds}:{PORT}",
              "--hostname-file", str(work / "hostname")]
    if agent == "cloudinit":
        return [str(envs.peers_python), str(drivers / "cloudinit_driver.py"), *common,
                "--peer-path", str(envs.cloudinit_path)]
    if agent == "waagent":
        return [str(envs.peers_python), str(drivers / "waagent_driver.py"), *common,
                "--peer-path", str(envs.waagent_path)]
    raise ValueError(agent)


# ---- one fleet ---------------------------------------------------------------------------------------------

def run_fleet(scenario: FleetScenario, agent: str, n: int, envs: peers.Environments, base: Path,
              progress: Any) -> dict[str, Any]:
    vms = [VM.make(i) for i in range(n)]
    fabric = FleetFabric(vms, scenario)
    fabric.start(wire=scenario.refuse_s == 0)
    counter = ConnectCounter()
    read_fd, write_fd = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    load = run.LoadSampler()
    try:
        for vm in vms:
            work = base / f"{agent}-{vm.index:03d}"
            work.mkdir(parents=True)
            argv = argv_for(agent, envs, vm, work)
            with open(work / "output.log", "wb") as log:
                procs.append(subprocess.Popen(["/bin/sh", "-c", 'read _ignored; exec "$@" </dev/null', "sh", *argv],
                                              stdin=read_fd, stdout=log, stderr=subprocess.STDOUT,
                                              env=run.child_env(), start_new_session=True))
        os.close(read_fd)
        time.sleep(1.0)  # every sh reaches its read()
        counter.start()
        load.__enter__()
        released = time.monotonic()
        os.close(write_fd)  # EOF on the pipe: every agent starts now
        up_timer = None
        if scenario.refuse_s:
            up_timer = threading.Timer(scenario.refuse_s, fabric.listen_wire)
            up_timer.start()
        exits: dict[int, tuple[int, float, bool]] = {}
        while len(exits) < n:
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if i not in exits and proc.poll() is not None:
                    exits[i] = (proc.returncode, now - released, False)
            if now - released > scenario.cap_s:
                for i, proc in enumerate(procs):
                    if i not in exits:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        exits[i] = (proc.returncode, now - released, True)
                break
            time.sleep(0.05)
        if up_timer is not None:
            up_timer.cancel()
            if fabric.wire_up_at is None:  # every agent ended before the fabric came back
                fabric.listen_wire()
        time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        counter.stop()
        load.__exit__()
        fabric.stop()
    progress(f"fleet {scenario.key} {agent} N={n}: done in {time.monotonic() - released:.1f} s")
    result = analyse(scenario, agent, n, released, fabric, counter, exits, load.summary())
    ready = {e["vm"] for e in fabric.log if e.get("state") == "Ready" and e.get("status") == 200}
    # Why an agent never got there: the end of its output, for the first few (the workdirs are temporary).
    result["never_ready_output"] = {str(i): (base / f"{agent}-{i:03d}" / "output.log").read_text(
        errors="replace")[-600:].replace(f"{HERE.parent}/", "") for i in sorted(set(range(n)) - ready)[:3]}
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def trio(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 0.5), "p90": pct(values, 0.9), "max": max(values) if values else None}


def peak_in_1s(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def busiest_share(times: list[float], bin_s: float = 0.1, top: float = 0.1) -> float | None:
    """Share of all requests that fall in the busiest `top` of the `bin_s` bins between first and last."""
    if len(times) < 2:
        return None
    first = min(times)
    bins = [0] * (int((max(times) - first) / bin_s) + 1)
    for t in times:
        bins[int((t - first) / bin_s)] += 1
    busiest = sorted(bins, reverse=True)[:max(1, math.ceil(len(bins) * top))]
    return sum(busiest) / len(times)


def retry_times(log: list[dict[str, Any]], service: str) -> list[float]:
    """When each retry reached `service`: every request that follows a throttled answer to the same VM.
    Unlike all requests after the first second, this leaves out the fleet's first requests, whose spread
    is set by how fast N interpreters start here, not by any retry policy."""
    by_vm: dict[int, list[dict[str, Any]]] = {}
    for e in sorted(log, key=lambda e: e["t"]):
        if e["service"] == service:
            by_vm.setdefault(e["vm"], []).append(e)
    return [b["t"] for entries in by_vm.values() for a, b in zip(entries, entries[1:]) if a["throttled"]]


def retry_gaps(log: list[dict[str, Any]]) -> list[float]:
    """For each throttled answer: the time until that VM's next request to the same service."""
    by_vm: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for e in sorted(log, key=lambda e: e["t"]):
        by_vm.setdefault((e["vm"], e["service"]), []).append(e)
    gaps = []
    for entries in by_vm.values():
        for a, b in zip(entries, entries[1:]):
            if a["throttled"]:
                gaps.append(b["t"] - a["t"])
    return gaps


def analyse(scenario: FleetScenario, agent: str, n: int, released: float, fabric: FleetFabric,
            counter: ConnectCounter, exits: dict[int, tuple[int, float, bool]],
            load: dict[str, float]) -> dict[str, Any]:
    log = fabric.log
    ready: dict[int, float] = {}
    first: dict[int, float] = {}
    for e in sorted(log, key=lambda e: e["t"]):
        first.setdefault(e["vm"], e["t"])
        if e["route"] == "health" and e.get("status") == 200 and e.get("state") == "Ready":
            ready.setdefault(e["vm"], e["t_answer"])
    services: dict[str, dict[str, Any]] = {}
    for service in (WIRE, IMDS):
        entries = [e for e in log if e["service"] == service]
        throttled = sum(e["throttled"] for e in entries)
        services[service] = {"requests": len(entries), "per_vm": len(entries) / n, "throttled": throttled,
                             "throttled_pct": 100.0 * throttled / len(entries) if entries else 0.0}
    times = [e["t"] for e in log]
    t_first = min(times) if times else released
    limited = WIRE if scenario.wire_rate else IMDS if scenario.imds_rate else None
    gaps = retry_gaps(log)
    out: dict[str, Any] = {
        "scenario": scenario.key, "agent": agent, "n": n, "load": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "never_ready": n - len(ready),
        "exit_codes": dict(sorted({str(c): sum(1 for x in exits.values() if x[0] == c)
                                   for c, _, _ in exits.values()}.items())),
        "killed_at_cap": sum(1 for _, _, k in exits.values() if k),
        "spawn_to_ready_s": trio([t - released for t in ready.values()]),
        "first_request_to_ready_s": trio([ready[v] - first[v] for v in ready]),
        "services": services,
        "connects": counter.between(released - 0.01, time.monotonic() + 1),
        "peak_requests_1s": peak_in_1s(times),
        "peak_requests_1s_after_first_s": peak_in_1s([t for t in times if t >= t_first + 1.0]),
        "retry_gap_cv": statistics.pstdev(gaps) / statistics.mean(gaps) if len(gaps) > 1 else None,
        "retry_gaps": len(gaps),
        "busiest_10pct_bins_share": busiest_share(times),
        "last_exit_s": max((t for _, t, _ in exits.values()), default=None),
    }
    if limited is not None:
        lt = [e["t"] for e in log if e["service"] == limited]
        out["limited_service"] = limited
        out["limited_rate"] = scenario.wire_rate or scenario.imds_rate
        out["limited_peak_1s_after_first_s"] = peak_in_1s([t for t in lt if t >= (min(lt) if lt else 0) + 1.0])
        out["limited_retry_peak_1s"] = peak_in_1s(retry_times(log, limited))
    if scenario.refuse_s:
        up = fabric.wire_up_at or released + scenario.refuse_s
        window = up - (released + 2.0)
        out["refused_connects_per_vm_s"] = counter.between(released + 2.0, up) / window / n if window > 0 else None
        out["connects_peak_1s"] = counter.peak_1s()
        out["ready_after_up_s"] = trio([t - fabric.listen_at.get(v, up) for v, t in ready.items()])
        out["listen_spread_s"] = max(fabric.listen_at.values()) - min(fabric.listen_at.values()) \
            if fabric.listen_at else None
    return out


# ---- report ------------------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def p3(d: dict[str, float | None]) -> str:
    return " / ".join(fmt(d.get(k)) for k in ("p50", "p90", "max"))


def render(data: dict[str, Any]) -> str:
    meta, rows = data["meta"], data["results"]
    ns = sorted({r["n"] for r in rows})
    dates = sorted({r.get("date", meta["date"]) for r in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} – {dates[-1]}"
    lines = ["## Fleet benchmark (`make bench-fleet`, bench/fleet.py)", "",
             f"{when}, commit {meta['commit']}, N = {', '.join(map(str, ns))} agents per fleet, "
             f"{meta['machine']}, interpreter {meta['python']}. One fleet is one agent type; all of a fleet's "
             "agents are released at the same instant on this one machine, so spawn → Ready includes waiting "
             "for a CPU (N interpreters starting on the cores this machine has, shared with other work). "
             "Times in seconds (p50 / p90 / max). Host load: the 1-minute load average during each fleet "
             "(start → max).", "",
             "| scenario | agent | N | never Ready | spawn → Ready | first request → Ready | WireServer req/VM "
             "(% throttled) | IMDS req/VM (% throttled) | connects/VM | peak req in 1 s (after the 1st s) "
             "| retry-gap CV | busiest 10 % of 100 ms bins | host load |",
             "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ws, im = r["services"][WIRE], r["services"][IMDS]
        killed = f" ({r['killed_at_cap']} killed)" if r["killed_at_cap"] else ""
        never = f"**{r['never_ready']}**{killed}" if r["never_ready"] else "0"
        lines.append(
            f"| {r['scenario']} | {r['agent']} | {r['n']} | {never} | {p3(r['spawn_to_ready_s'])} | "
            f"{p3(r['first_request_to_ready_s'])} | {ws['per_vm']:.2f} ({ws['throttled_pct']:.0f} %) | "
            f"{im['per_vm']:.2f} ({im['throttled_pct']:.0f} %) | {r['connects'] / r['n']:.1f} | "
            f"{r['peak_requests_1s']} ({r['peak_requests_1s_after_first_s']}) | {fmt(r['retry_gap_cv'])} | "
            f"{fmt(r['busiest_10pct_bins_share'] * 100 if r['busiest_10pct_bins_share'] is not None else None, 0)} % "
            f"| {r['load']['start']:.1f} → {r['load']['max']:.1f} |")
    refusals = [r for r in rows if "ready_after_up_s" in r]
    if refusals:
        lines += ["", "Refusal scenarios: connection attempts per VM per second while refused (from 2 s after the "
                  "release until the fabric listens; every connect in the namespace, /proc/net/snmp ActiveOpens), "
                  "the peak of connects in any second, and Ready after the fabric listens again (each VM's Ready minus "
                  "the moment its own WireServer address started listening).", "",
                  "| scenario | agent | N | connects/s per VM after 2 s | peak connects in 1 s "
                  "| Ready after the fabric is back (p50 / p90 / max) |", "|---|---|---:|---:|---:|---|"]
        for r in refusals:
            lines.append(f"| {r['scenario']} | {r['agent']} | {r['n']} | {fmt(r['refused_connects_per_vm_s'], 1)} | "
                         f"{r['connects_peak_1s']} | {p3(r['ready_after_up_s'])} |")
    lines += ["", *render_goals(rows)]
    return "\n".join(lines) + "\n"


def render_goals(rows: list[dict[str, Any]]) -> list[str]:
    """The fleet goals, checked for azprov against the runs above (same N)."""
    def find(scenario: str, agent: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["scenario"] == scenario and r["agent"] == agent), None)

    checks: list[tuple[str, str, bool | None]] = []
    for r in rows:
        if r["agent"] == "azprov":
            checks.append((f"{r['scenario']}: agents never Ready = 0", str(r["never_ready"]), r["never_ready"] == 0))
    ours, theirs = find("ws50", "azprov"), find("ws50", "cloudinit")
    if ours:
        limit = min(4.0, theirs["services"][WIRE]["per_vm"]) if theirs else 4.0
        per_vm = ours["services"][WIRE]["per_vm"]
        checks.append((f"ws50: WireServer requests per VM ≤ cloud-init's and ≤ ~4 (limit {limit:.2f})",
                       f"{per_vm:.2f}", per_vm <= limit))
    for key in ("ws50", "imds20"):
        r = find(key, "azprov")
        if r:
            cv = r["retry_gap_cv"]
            checks.append((f"{key}: retry-gap CV ≥ 0.3", fmt(cv), None if cv is None else cv >= 0.3))
            peak, rate = r["limited_peak_1s_after_first_s"], r["limited_rate"]
            checks.append((f"{key}: peak 1 s rate of the throttled service after the first second ≤ 1.5 × "
                           f"{rate:g}", str(peak), peak <= 1.5 * rate))
            retries = r.get("limited_retry_peak_1s")
            if retries is not None:
                checks.append((f"{key}: the same, retries only (first requests left out) ≤ 1.5 × {rate:g}",
                               str(retries), retries <= 1.5 * rate))
    for key in ("refuse30", "refuse45"):
        r = find(key, "azprov")
        if r:
            c = r["refused_connects_per_vm_s"]
            checks.append((f"{key}: ≤ 10 connects/s per VM after the first 2 s", fmt(c, 1),
                           None if c is None else c <= 10))
            worst = r["ready_after_up_s"]["max"]
            checks.append((f"{key}: Ready ≤ 1.5 s after the fabric returns (max)", fmt(worst),
                           None if worst is None else worst <= 1.5))
    lines = ["Fleet goals, azprov (same runs):", "", "| goal | azprov | met |", "|---|---:|---|"]
    for what, value, met in checks:
        lines.append(f"| {what} | {value} | {'—' if met is None else 'yes' if met else '**no**'} |")
    return lines


def default_n() -> int:
    available_kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                         if ln.startswith("MemAvailable:"))
    return max(2, min(200, available_kib // 1024 // 2 // MIB_PER_AGENT))  # at most half of what is free


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--vms", type=int, help="agents per fleet (default 200, fewer when memory is short)")
    p.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    p.add_argument("-a", "--agent", action="append", choices=AGENTS, help="default: all")
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS_fleet.md and raw/fleet.json go")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--no-render", action="store_true", help="leave bench/RESULTS*.md alone")
    p.add_argument("--merge", action="store_true", help="keep the other fleets of bench/raw/fleet.json (this "
                   "run replaces only the same scenario, agent and N)")
    p.add_argument("--smoke", action="store_true", help="N = 3, azprov, no throttle, no files written; "
                   "prints JSON and exits 1 unless every agent reached Ready")
    args = p.parse_args(argv)
    if args.smoke:
        args.vms, args.scenario, args.agent, args.no_render = args.vms or 3, ["none"], ["azprov"], True
    n = args.vms or default_n()
    keys = args.scenario or list(DEFAULT_SCENARIOS)
    agents = args.agent or list(AGENTS)
    with_peers = any(a != "azprov" for a in agents)
    if not netns.inside():
        if not args.smoke:
            peers.prepare(args.cache, with_peers=with_peers)  # downloads and installs need the network
        forwarded = sys.argv[1:] if argv is None else list(argv)
        return netns.reexec_inside(__file__, forwarded)
    netns.assert_inside()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # two listeners per VM plus every open connection
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * n + 256)), hard))
    # The smoke run uses the running venv's azprov, as `bench/run.py --quick` does: no cache to build.
    envs = peers.current(Path(sys.executable)) if args.smoke else peers.prepare(args.cache, with_peers=with_peers)
    results = []
    for key in keys:
        for agent in agents:
            with tempfile.TemporaryDirectory(prefix="azprov-fleet-") as tmp:
                results.append(run_fleet(SCENARIOS[key], agent, n, envs, Path(tmp),
                                         lambda line: print(line, file=sys.stderr, flush=True)))
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": run.git_commit(),
                     "python": envs.versions.get("python"), "versions": envs.versions,
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.release()}"},
            "results": results}
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    if args.smoke:
        print(json.dumps(results, indent=1))
        return 0 if all(r["never_ready"] == 0 for r in results) else 1
    if not args.no_render:
        (args.out / "raw").mkdir(parents=True, exist_ok=True)
        old = args.out / "raw" / "fleet.json"
        if args.merge and old.exists():
            fresh = {(r["scenario"], r["agent"], r["n"]) for r in results}
            kept = [r for r in json.loads(old.read_text())["results"]
                    if (r["scenario"], r["agent"], r["n"]) not in fresh]
            order = {k: i for i, k in enumerate(SCENARIOS)}
            data["results"] = sorted(kept + results, key=lambda r: (order[r["scenario"]], -r["n"],
                                                                    AGENTS.index(r["agent"])))
        (args.out / "raw" / "fleet.json").write_text(json.dumps(data, indent=1) + "\n")
        (args.out / "RESULTS_fleet.md").write_text(render(data))
        (args.out / "RESULTS.md").write_text(run.render(args.out))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
