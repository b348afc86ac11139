"""The reliability matrix as data: crash points, SIGTERM holds, fabric faults; and one way to run each.

Shared by the tests (tests/test_reliability.py asserts on every outcome) and by bench/reliability.py (runs
each scenario N times and tabulates). A scenario runs the real `azprov` CLI as a subprocess against the
loopback fake fabric under a temporary root, with small budgets, and returns a `Result` saying what the
fabric saw (accepted Ready / ProvisioningFailed reports for its current incarnation) and what the agent
left on disk. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import Env as _CliEnv
from fakefabric import GOAL_STATE, FakeFabric


class Env(_CliEnv):
    """Runs `azprov` the way the console script does (statemachine.launch: gc off, exit by os._exit)."""

    def argv(self, *args: str) -> list[str]:
        cli = super().argv(*args)
        return [*cli[:2], "statemachine.launch", *cli[3:]]

ACTIVE_PHASES = ("network_wait", "goalstate", "reporting", "configuring")
PERSIST_POINTS = ("persist.before_write", "persist.before_rename", "persist.after_rename")
SAVES_IN_A_RUN = 5  # start, →goalstate, →reporting, →configuring, →done (with the last configure step)
CRASH_ACTIONS = ("kill", "exit")  # SIGKILL (power cut) and os._exit (no cleanup)

# Small budgets: every fault either heals inside them or exhausts them within seconds.
FAST = {"network_timeout": 3.0, "wireserver_timeout": 3.0, "imds_timeout": 3.0, "request_timeout": 1.0}


@dataclasses.dataclass
class Result:
    name: str
    rc: int
    state: str
    elapsed: float
    ready: int  # accepted Ready reports for the fabric's current incarnation
    failure_reports: int  # accepted NotReady/ProvisioningFailed reports
    last_error: dict[str, Any] | None
    output: str
    record: dict[str, Any] | None
    duplicate_allowed: bool = False  # crash fell between the Ready's 200 and the record saying so
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duplicate(self) -> bool:
        return self.ready > 1

    @property
    def lost(self) -> bool:
        """The run ended DONE (or the VM believes it is provisioned) without an accepted Ready."""
        return self.state == "done" and self.ready == 0


def read_record(vm: Env) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(vm.state_file.read_text())
        return loaded
    except FileNotFoundError:
        return None


def temp_leftovers(vm: Env) -> list[str]:
    return sorted(p.name for p in vm.state_dir.glob(".state.json-*"))


def _result(name: str, vm: Env, fab: FakeFabric, proc: subprocess.CompletedProcess[str], elapsed: float,
            **extra: Any) -> Result:
    record = read_record(vm)
    ready = [r for r in fab.ready_reports() if r["incarnation"] == fab.incarnation]
    return Result(name=name, rc=proc.returncode, state=(record or {}).get("state", "none"), elapsed=elapsed,
                  ready=len(ready), failure_reports=len(fab.failure_reports()),
                  last_error=(record or {}).get("last_error"), output=proc.stdout + proc.stderr,
                  record=record, **extra)


def timed_run(vm: Env, timeout: float = 60, env: dict[str, str] | None = None
              ) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = vm.run(timeout=timeout, env=env)
    return proc, time.monotonic() - started


# ---- crash points ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Crash:
    point: str
    action: str
    nth: int = 1

    @property
    def name(self) -> str:
        return f"{self.point}:{self.action}" + (f"@{self.nth}" if self.nth != 1 else "")


def crash_points() -> list[tuple[str, int]]:
    points = [(f"{phase}.{when}", 1) for phase in ACTIVE_PHASES for when in ("before_work", "after_work")]
    points.append(("reporting.after_post", 1))
    points += [(p, n) for p in PERSIST_POINTS for n in range(1, SAVES_IN_A_RUN + 1)]
    return points


def crash_matrix() -> list[Crash]:
    return [Crash(p, a, n) for p, n in crash_points() for a in CRASH_ACTIONS]


def run_crash(crash: Crash, tmp: Path) -> Result:
    """Die at the failpoint, then boot again without it: the second run must finish the job."""
    with FakeFabric() as fab:
        vm = Env(tmp, fab.url)
        vm.set("fabric", **FAST)
        first, t1 = timed_run(vm, env={"AZPROV_FAILPOINT": f"{crash.point}:{crash.action}@{crash.nth}"})
        after_crash = read_record(vm)
        ready_after_crash = len(fab.ready_reports())
        # The one window where a second Ready is expected: the fabric took one, the record does not say so.
        window = ready_after_crash > 0 and not (after_crash or {}).get("reported_ready_at")
        second, t2 = timed_run(vm)
        result = _result(crash.name, vm, fab, second, t1 + t2, duplicate_allowed=window)
        result.detail = {"first_rc": first.returncode, "record_after_crash": after_crash,
                         "first_output": first.stdout + first.stderr, "leftovers": temp_leftovers(vm)}
        return result


# ---- SIGTERM in each state ---------------------------------------------------------------------------------

HOLD_ROUTE = {"network_wait": None, "goalstate": "goalstate", "reporting": "health", "configuring": "imds"}


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def run_sigterm(phase: str, tmp: Path) -> Result:
    """Hold the agent inside `phase` (a request the fake never answers), send SIGTERM, then boot again."""
    route = HOLD_ROUTE[phase]
    fab = FakeFabric()
    if route is None:
        fab.reserve_port()  # nothing listens: NETWORK_WAIT polls
    else:
        fab.set_script(route, [{"action": "hang", "delay": 60}])
        fab.start()
    try:
        vm = Env(tmp, fab.url)
        vm.set("fabric", network_timeout=60.0, wireserver_timeout=60.0, imds_timeout=60.0, request_timeout=30.0)
        proc = vm.popen()
        wait_for(lambda: (read_record(vm) or {}).get("state") == phase and (route is None or fab.requests(route)))
        time.sleep(0.1)  # well inside the blocking read (or the poll loop)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        took = time.monotonic() - sent
        held = read_record(vm)
        if route is None:
            fab.start()
        else:
            fab.set_script(route, [])
        second, t2 = timed_run(vm)
        result = _result(f"sigterm in {phase}", vm, fab, second, took + t2)
        result.detail = {"term_rc": proc.returncode, "term_seconds": took, "term_output": output,
                         "record_after_term": held}
        return result
    finally:
        fab.stop()


# ---- fabric faults -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    script: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    expect: str = "done"  # "done" or "failed"
    reported: bool = False  # when failed: a ProvisioningFailed report must reach the fabric
    max_time: float = 3.0  # seconds the whole run may take
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # [fabric] overrides
    listen_late: float | None = None
    wire: str = "fake"  # "fake", "blackhole" (accepts, never answers), "slow_headers", "closed"
    # route → a text: the route's script ends once a request on it carries that text (e.g. the first
    # failure report), so "fails, then heals" does not depend on how fast this machine is today.
    heal_on: dict[str, str] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    slow: bool = False
    # A scripted 200 to a Ready whose body we then cannot read counts as accepted by the fake, though the
    # agent rightly retries: a second Ready is expected there.
    duplicate_ok: bool = False


def storm(answer: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [dict(answer) for _ in range(n)]


NO_ROLE = GOAL_STATE.replace("<RoleInstanceList>", "<RoleInstanceList><!--").replace(
    "</RoleInstanceList>", "--></RoleInstanceList>")
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, a connection attempt fails at once


def _faults() -> Iterator[Fault]:
    # Four IMDS errors: full jitter under ceilings of 0.25, 0.5, 1 and 2 s may wait up to 3.75 s in all, which
    # the IMDS budget cuts short with a last try. So such a run may take that whole budget plus its own work.
    imds_storm_time = FAST["imds_timeout"] + 1.5
    for route in ("goalstate", "health", "imds"):
        after = {"Retry-After": "0.2"}
        # health: a 200 whose body never ends or is too big; the Ready was taken and must not be posted again.
        unreadable_200 = {"status": 200, "body": "x" * 50} if route == "health" else {}
        dup = False
        yield Fault(f"{route}: 500 storm", {route: storm({"status": 500}, 4)},
                    max_time=imds_storm_time if route == "imds" else Fault.max_time)
        yield Fault(f"{route}: 503 storm, Retry-After", {route: storm({"status": 503, "headers": after}, 4)})
        yield Fault(f"{route}: 429 storm, Retry-After", {route: storm({"status": 429, "headers": after}, 4)})
        yield Fault(f"{route}: hang > per-call timeout", {route: [{"action": "hang", "delay": 5}]}, max_time=4.0)
        yield Fault(f"{route}: connection reset", {route: storm({"action": "reset"}, 3)})
        yield Fault(f"{route}: close without answer", {route: storm({"action": "close"}, 3)})
        yield Fault(f"{route}: slow body 1 byte/s", {route: [{"action": "slow", "delay": 1.0, **unreadable_200}]},
                    max_time=4.0, duplicate_ok=dup)
        yield Fault(f"{route}: 50 MB body", {route: [{"status": 200, "body": "<a>" + "x" * (50 << 20) + "</a>"}]},
                    max_time=5.0, slow=True, duplicate_ok=dup)
    yield Fault("goalstate: malformed body", {"goalstate": [{"status": 200, "body": "<GoalState><Incarn"}]})
    yield Fault("goalstate: not XML at all", {"goalstate": [{"status": 200, "body": "\x00\xff garbage"}]})
    yield Fault("goalstate: no RoleInstance", {"goalstate": storm({"status": 200, "body": NO_ROLE}, 3)})
    yield Fault("health: 200 with malformed body", {"health": [{"status": 200, "body": "<<<"}]})
    yield Fault("health: 410 + incarnation bump", {"health": storm({"action": "bump"}, 2)})
    yield Fault("imds: malformed JSON", {"imds": [{"status": 200, "body": '{"compute": '}]})
    # JSON-valid (or nearly) hostile documents: refused like any unreadable answer, never a crash.
    yield Fault("imds: 5000-digit integer once", {"imds": [{"status": 200, "body": '{"compute": {"vmId": '
                                                                                   + "9" * 5000 + "}}"}]})
    yield Fault("imds: NaN and 1e999 once", {"imds": [{"status": 200, "body": '{"compute": {"a": NaN, "b": 1e999}}'}]})
    yield Fault("imds: nested 100000 deep once", {"imds": [{"status": 200, "body": "[" * 100000 + "]" * 100000}]})
    yield Fault("imds: 404 for a while", {"imds": storm({"status": 404}, 4)}, max_time=imds_storm_time)
    yield Fault("imds: 410 for a while", {"imds": storm({"status": 410}, 4)}, max_time=imds_storm_time)
    yield Fault("imds: 429 for a while, Retry-After",
                {"imds": storm({"status": 429, "headers": {"Retry-After": "0.2"}}, 4)})
    plain = GOAL_STATE.split("?>", 1)[1].format(incarnation="1", container_id=FakeFabric().container_id,
                                                 instance_id=FakeFabric().instance_id)
    xxe = '<!DOCTYPE GoalState [<!ENTITY x SYSTEM "file:///nonexistent/secret">]>' + plain.replace(
        "<Version>", "<Version>&x;")
    laughs = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    yield Fault("goalstate: XXE document once", {"goalstate": [{"status": 200, "body": xxe}]})
    yield Fault("goalstate: billion laughs once", {"goalstate": [{"status": 200, "body": f"<!DOCTYPE GoalState "
                                                                  f"[{laughs}]>" + plain.replace("<Version>",
                                                                                                 "<Version>&l9;")}]})
    yield Fault("goalstate: UTF-16 with BOM", {"goalstate": [{"status": 200, "body": (
        '<?xml version="1.0" encoding="utf-16"?>' + plain).encode("utf-16")}]})
    yield Fault("goalstate: namespaced", {"goalstate": [{"status": 200, "body": plain.replace(
        "<GoalState ", '<GoalState xmlns="urn:azure" ')}]})
    yield Fault("goalstate: XXE for ever", {"goalstate": storm({"status": 200, "body": xxe}, 100000)},
                expect="failed", max_time=6.0, settings={"wireserver_timeout": 1.5})
    yield Fault("wireserver listens late (1 s)", listen_late=1.0)
    yield Fault("dead proxy in the environment", env={k: DEAD_PROXY for k in (
        "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")})
    # Budgets exhausted: FAILED, reported when the fabric can still take a report.
    yield Fault("imds: 500 beyond the budget", {"imds": storm({"status": 500}, 1000)}, expect="failed",
                reported=True, max_time=4.5, settings={"imds_timeout": 1.5})
    yield Fault("imds: 404 beyond the budget", {"imds": storm({"status": 404}, 1000)}, expect="failed",
                reported=True, max_time=4.5, settings={"imds_timeout": 1.5})
    yield Fault("health: 503 beyond the budget, then heals", {"health": storm({"status": 503}, 10000)},
                expect="failed", reported=True, max_time=6.0, settings={"wireserver_timeout": 1.5},
                heal_on={"health": "NotReady"})
    yield Fault("goalstate: 500 beyond the budget", {"goalstate": storm({"status": 500}, 100000)}, expect="failed",
                max_time=6.0, settings={"wireserver_timeout": 1.5})
    yield Fault("wireserver never listens", wire="closed", expect="failed", max_time=3.0,
                settings={"network_timeout": 1.5})
    yield Fault("wireserver accepts, never answers", wire="blackhole", expect="failed", max_time=6.0,
                settings={"wireserver_timeout": 1.5, "request_timeout": 0.5})
    yield Fault("wireserver trickles its headers", wire="slow_headers", expect="failed", max_time=6.0,
                settings={"wireserver_timeout": 1.5, "request_timeout": 0.5})


FAULTS = list(_faults())


@contextmanager
def odd_server(kind: str) -> Iterator[str]:
    """A WireServer that misbehaves below HTTP: 'blackhole' completes the TCP handshake and never reads or
    answers (the kernel's backlog does the accepting); 'slow_headers' answers one header byte a second;
    'closed' is a port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = threading.Event()
    threads: list[threading.Thread] = []
    if kind == "closed":
        sock.close()
        yield url
        return
    sock.listen(64)
    if kind == "slow_headers":
        def trickle(conn: socket.socket) -> None:
            head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 10000 + b"\r\n\r\n"
            with conn:
                for i in range(len(head)):
                    if stop.wait(0.2):
                        return
                    try:
                        conn.sendall(head[i:i + 1])
                    except OSError:
                        return

        def serve() -> None:
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                t = threading.Thread(target=trickle, args=(conn,), daemon=True)
                t.start()
                threads.append(t)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
    try:
        yield url
    finally:
        stop.set()
        sock.close()


def run_fault(fault: Fault, tmp: Path) -> Result:
    fab = FakeFabric()
    timers: list[threading.Timer] = []
    for route, answers in fault.script.items():
        fab.set_script(route, answers)
    if fault.listen_late is not None:
        fab.reserve_port()
        timers.append(threading.Timer(fault.listen_late, fab.start))
    else:
        fab.start()
    for route, text in fault.heal_on.items():
        def heal(entry: dict[str, Any], route: str = route, text: str = text) -> None:
            if entry["route"] == route and text in entry["body"]:
                fab.set_script(route, [])
        fab.observers.append(heal)
    try:
        with odd_server(fault.wire if fault.wire != "fake" else "closed") as odd_url:
            vm = Env(tmp, fab.url)
            vm.set("fabric", **{**FAST, **fault.settings})
            if fault.wire != "fake":
                vm.set("fabric", wireserver_url=odd_url)
            for t in timers:
                t.start()
            proc, elapsed = timed_run(vm, env=fault.env)
            return _result(fault.name, vm, fab, proc, elapsed, duplicate_allowed=fault.duplicate_ok)
    finally:
        for t in timers:
            t.cancel()
        fab.stop()


# ---- broken records, unusable state directories, concurrency ---------------------------------------------

def _valid_record_text() -> str:
    from statemachine import persistence
    from statemachine.machine import Phase

    return json.dumps(persistence.to_json(persistence.Record(state=Phase.REPORTING)))


RECORD_CASES = {
    "record: empty": b"",
    "record: truncated": b'{"schema": 1, "state": "repor',
    "record: not JSON": b"\x00\xff garbage",
    "record: unknown schema": b'{"schema": 99, "state": "done"}',
    "record: wrong types": b'{"schema": 1, "state": "done", "history": [{"at": {}}]}',
    "record: symlink elsewhere": b"symlink",
    "record: writable by others": b"mode",
    "record: 5000-digit integer": b'{"schema": 1, "state": "reporting", "attempts": ' + b"9" * 5000 + b"}",
    "record: nested 100000 deep": b'{"schema": 1, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
}


def run_record(case: str, tmp: Path) -> Result:
    """Plant a broken record, boot: it must be moved aside and the VM must still report Ready."""
    with FakeFabric() as fab:
        vm = Env(tmp, fab.url)
        vm.state_dir.mkdir(mode=0o700)
        content = RECORD_CASES[case]
        if content == b"symlink":
            target = tmp / "elsewhere.json"
            target.write_text(_valid_record_text())
            vm.state_file.symlink_to(target)
        else:
            vm.state_file.write_bytes(_valid_record_text().encode() if content == b"mode" else content)
            vm.state_file.chmod(0o666 if content == b"mode" else 0o600)
        proc, elapsed = timed_run(vm)
        result = _result(case, vm, fab, proc, elapsed)
        result.detail = {"moved_aside": len(list(vm.state_dir.glob("state.json.corrupt-*")))}
        return result


MOUNT_CASES = {
    "state dir read-only": "mount -o remount,ro {d}",
    "state dir read-only, mid-provisioning record": "printf '%s' {valid} > state.json; chmod 600 state.json; "
                                                    "mount -o remount,ro {d}",
    "state dir full (ENOSPC)": "dd if=/dev/zero of=fill bs=1k count=64 2>/dev/null || true",
}


def run_mount_case(case: str, tmp: Path) -> Result:
    """The state dir is a 16 KiB tmpfs in a private mount namespace (unshare -m): nothing else is touched."""
    import shlex

    with FakeFabric() as fab:
        vm = Env(tmp, fab.url)
        vm.state_dir.mkdir(mode=0o700)
        d = shlex.quote(str(vm.state_dir))
        setup = MOUNT_CASES[case].replace("{d}", d).replace("{valid}", shlex.quote(_valid_record_text()))
        script = (f"set -e; mount -t tmpfs -o size=16k,mode=0700 tmpfs {d}; cd {d}; {setup}; cd /; "
                  f"exec {' '.join(shlex.quote(a) for a in vm.argv())}")
        started = time.monotonic()
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=vm.env(),
                              capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
        ready = [r for r in fab.ready_reports() if r["incarnation"] == fab.incarnation]
        # The record lived on the namespace's tmpfs and is gone with it: judge by exit code and the fabric.
        return Result(name=case, rc=proc.returncode, state="done" if proc.returncode == 0 else "failed",
                      elapsed=elapsed, ready=len(ready), failure_reports=len(fab.failure_reports()),
                      last_error=None, output=proc.stdout + proc.stderr, record=None)


def run_concurrent(tmp: Path) -> Result:
    """Two runs at once: one provisions, the other waits for the lock and finds DONE."""
    with FakeFabric() as fab:
        fab.set_script("goalstate", [{"status": 200, "delay": 1.0, "body": fab.goal_state()}])
        vm = Env(tmp, fab.url)
        started = time.monotonic()
        first = vm.popen()
        wait_for(lambda: vm.state_file.exists())
        second = vm.popen()
        out1, _ = first.communicate(timeout=60)
        out2, _ = second.communicate(timeout=60)
        elapsed = time.monotonic() - started
        rc = max(first.returncode, second.returncode)
        proc = subprocess.CompletedProcess(args=[], returncode=rc, stdout=out1 + out2, stderr="")
        return _result("two runs at once", vm, fab, proc, elapsed)


FAIL_POINTS = ("fail.before_report", "fail.after_report")


def run_fail_crash(point: str, action: str, tmp: Path) -> Result:
    """IMDS fails past its budget and the agent dies around the ProvisioningFailed POST; IMDS heals and the
    VM boots again. `ready` counts only when Ready is the platform's last word for the incarnation."""
    with FakeFabric() as fab:
        fab.set_script("imds", [{"status": 500}] * 10000)
        vm = Env(tmp, fab.url)
        vm.set("fabric", **{**FAST, "imds_timeout": 0.5})
        first, t1 = timed_run(vm, env={"AZPROV_FAILPOINT": f"{point}:{action}"})
        fab.set_script("imds", [])
        second, t2 = timed_run(vm)
        result = _result(f"{point}:{action}", vm, fab, second, t1 + t2, duplicate_allowed=True)
        taken = [e for e in fab.requests("health") if e["status"] == 200 and e["incarnation"] == fab.incarnation]
        if not taken or taken[-1]["health_state"] != "Ready":
            result.ready = 0  # the platform's last word is not Ready: as good as lost
        result.detail = {"first_rc": first.returncode}
        return result


# ---- hardening: planted links, placeholder identities, refused names --------------------------------------
#
# Each runner returns its Result with `detail["problems"]`: what the run got wrong beyond its outcome (the
# outside tree changed, a refusal not named, a second boot that asked the fabric again). The planted trees
# and plants are tests/test_fs_family.py's, here driven through the whole CLI instead of one writer.

HANG_BOUND = 20.0  # seconds: a run this long has hung (on a FIFO, a lock, a blocked pool)
HOST_ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow")  # only read: proof they stay as found
ALL_STEPS = ["hostname", "user", "ssh_keys"]
SYMLINK = "symlink in the path; refusing to follow it"


def _host_accounts() -> dict[str, bytes]:
    return {p: Path(p).read_bytes() for p in HOST_ACCOUNT_FILES if Path(p).exists()}


def bounded_run(vm: Env, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """One run that may not hang: past HANG_BOUND it is killed, and its rc is -1 (counted as hung)."""
    started = time.monotonic()
    try:
        proc = vm.run(*args, timeout=HANG_BOUND)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        proc = subprocess.CompletedProcess(e.cmd, -1, out + f"\nHUNG: killed after {HANG_BOUND:.0f} s", "")
    return proc, time.monotonic() - started


def status_json(vm: Env) -> dict[str, Any]:
    out = vm.run("--status", "--json", timeout=HANG_BOUND)
    try:
        shown: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        return {"unreadable": out.stdout + out.stderr}
    return shown


def _imds_with_key(fab: FakeFabric, key: str, **profile: str) -> None:
    doc = fab.imds()
    doc["compute"]["publicKeys"] = [{"keyData": key, "path": "/home/azureuser/.ssh/authorized_keys"}]
    doc["compute"]["osProfile"].update(profile)
    fab.imds_document = doc


@dataclasses.dataclass(frozen=True)
class Plant:
    """A link or special file planted under paths.root or at the state dir before the first boot."""
    name: str
    base: str  # "root", "tmp" (the state dir's parent)
    component: str  # tests/test_fs_family.py's plant(): the path under base that is replaced
    kind: str  # one of test_fs_family.KINDS
    refusal: str  # what the journal must name
    step: str | None  # the recoverable_errors entry (by step) that names the refusal; None: journal and --status


PLANTS = [
    Plant("planted: KVP pool file → absolute symlink outside", "root", "var/lib/hyperv/.kvp_pool_1",
          "abs_symlink", SYMLINK, "kvp"),
    Plant("planted: KVP pool file is a FIFO", "root", "var/lib/hyperv/.kvp_pool_1", "fifo", "a FIFO", "kvp"),
    Plant("planted: KVP pool dir → relative symlink outside", "root", "var/lib/hyperv", "rel_symlink", SYMLINK,
          "kvp"),
    Plant("planted: state dir → symlink to an outside dir", "tmp", "state", "abs_symlink",
          "state directory is not a directory", None),
    Plant("planted: admin's ~/.ssh → absolute symlink outside", "root", "home/azureuser/.ssh", "abs_symlink",
          SYMLINK, "ssh_keys"),
    Plant("planted: /etc/sudoers.d → absolute symlink outside", "root", "etc/sudoers.d", "abs_symlink", SYMLINK,
          "user"),
    Plant("planted: authorized_keys hard-linked to an outside file", "root", "home/azureuser/.ssh/authorized_keys",
          "hardlink", "hard-linked", "ssh_keys"),
]


def run_plant(case: Plant, tmp: Path) -> Result:
    """All three configure steps over a root with one planted link: Ready, DONE, the outside tree unchanged
    byte for byte, nothing hung, and the refusal named in the journal (and in the record, for a step's)."""
    from test_fs_family import KEY, SECRET, digest, make_tree, plant

    tree = make_tree(tmp)  # root with the admin account (uid 4321), state dir, outside tree of secrets
    (tree.state / "state.json").unlink()  # make_tree's broken record belongs to another family
    (tree.outside / "state").mkdir()
    (tree.outside / "state" / "state.json").write_bytes(SECRET)
    plant(tree, tree.root if case.base == "root" else tree.tmp, case.component, case.kind)
    outside_before, hosts_before = digest(tree.outside), _host_accounts()
    with FakeFabric() as fab:
        _imds_with_key(fab, KEY)
        vm = Env(tmp, fab.url)
        # user.groups empty: the account exists, so no shadow tool runs; the sudoers drop-in is still written.
        vm.set("fabric", **FAST).set("configure", steps=ALL_STEPS).set("user", groups=[])
        proc, elapsed = bounded_run(vm)
        linked_state = vm.state_dir.is_symlink()
        if linked_state:  # never read the record through the planted link: judge by exit code and fabric
            ready = [r for r in fab.ready_reports() if r["incarnation"] == fab.incarnation]
            result = Result(case.name, proc.returncode, "done" if proc.returncode == 0 else "failed", elapsed,
                            len(ready), len(fab.failure_reports()), None, proc.stdout + proc.stderr, None)
        else:
            result = _result(case.name, vm, fab, proc, elapsed)
    problems = []
    if proc.returncode == -1:
        problems.append("hung")
    if digest(tree.outside) != outside_before:
        problems.append("outside tree changed")
    for base in (tree.root, tree.tmp / "state"):
        for f in ([] if base.is_symlink() else base.rglob("*")):
            st = f.lstat()
            if f.is_file() and not f.is_symlink() and st.st_nlink == 1 and SECRET in f.read_bytes():
                problems.append(f"outside secret copied into {f.relative_to(tmp)}")
    if case.refusal not in result.output:
        problems.append("refusal not named in the journal")
    errors = (result.record or {}).get("recoverable_errors") or []
    if case.step is not None and not any(e.get("step") == case.step and case.refusal in json.dumps(e)
                                         for e in errors):
        problems.append(f"refusal not in recoverable_errors for step {case.step}")
    if _host_accounts() != hosts_before:
        problems.append("this machine's account files changed")
    if linked_state and (status_json(vm).get("last_error") or {}).get("reason") != case.refusal:
        problems.append("--status did not name the refused state directory")
    result.detail = {"problems": problems, "recoverable_errors": errors}
    return result


PLACEHOLDER_UUIDS = {"all-zero": "00000000-0000-0000-0000-000000000000",
                     "all-FF": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"}


def run_placeholder_uuid(which: str, tmp: Path) -> Result:
    """SMBIOS says "not present"/"not set": the VM id is IMDS vmId, --status says so, a reboot asks nothing."""
    with FakeFabric() as fab:
        vm = Env(tmp, fab.url)
        vm.set("fabric", **FAST)
        vm.uuid_path.write_text(PLACEHOLDER_UUIDS[which] + "\n")
        first, t1 = bounded_run(vm)
        asked = len(fab.log)
        second, t2 = bounded_run(vm)
        result = _result(f"SMBIOS UUID {which}", vm, fab, first, t1 + t2)
        problems = []
        record = result.record or {}
        if (record.get("vm_id"), record.get("vm_id_source")) != (fab.vm_id.lower(), "imds"):
            problems.append(f"vm id {record.get('vm_id')!r} from {record.get('vm_id_source')!r}, not IMDS vmId")
        shown = status_json(vm)
        if shown.get("vm_id_source") != "imds":
            problems.append(f"--status --json vm_id_source is {shown.get('vm_id_source')!r}")
        if second.returncode != 0 or len(fab.log) != asked:
            problems.append(f"second boot: exit {second.returncode}, {len(fab.log) - asked} fabric request(s)")
        result.detail = {"problems": problems, "second_output": second.stdout + second.stderr}
        return result


def run_done_record_without_vm_id(tmp: Path) -> Result:
    """A DONE record that names no VM is no proof of this one: provision afresh, report Ready."""
    from statemachine import persistence
    from statemachine.machine import Phase

    with FakeFabric() as fab:
        vm = Env(tmp, fab.url)
        vm.set("fabric", **FAST)
        vm.state_dir.mkdir(mode=0o700)
        persistence.save(vm.state_file, persistence.Record(state=Phase.DONE, vm_id=None))
        proc, elapsed = bounded_run(vm)
        result = _result("DONE record without vm_id", vm, fab, proc, elapsed)
        problems = []
        if (result.record or {}).get("vm_id") != vm.vm_id:
            problems.append("the new record does not carry this VM's id")
        if not (vm.state_dir / "state.json.prev").exists():
            problems.append("the old record was not kept aside")
        result.detail = {"problems": problems}
        return result


@dataclasses.dataclass(frozen=True)
class Name:
    """An adminUsername azprov must refuse: provisioning fails, and the ProvisioningFailed says why."""
    name: str
    username: str
    passwd: str  # lines added to the temporary root's etc/passwd (an existing account)
    reason: str  # what the ProvisioningFailed description must contain


NAMES = [
    Name('name: adminUsername `"azureuser\\n"`', "azureuser\n", "", "reason=admin username is not acceptable"),
    Name("name: an existing `nobody` (uid 65534, nologin)", "nobody",
         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", "a reserved system account name"),
    Name("name: an existing account, uid 65000 > UID_MAX", "svcbackup",
         "svcbackup:x:65000:65000::/home/svcbackup:/bin/bash\n", "outside UID_MIN..UID_MAX"),
    Name("name: an existing account, nologin shell", "svcweb",
         "svcweb:x:1500:1500::/home/svcweb:/usr/sbin/nologin\n", "allows no login"),
]


def run_name(case: Name, tmp: Path) -> Result:
    """The accounts live only in the temporary root's etc/passwd; this machine's are read, never written."""
    from test_fs_family import KEY, make_tree

    tree = make_tree(tmp)
    (tree.state / "state.json").unlink()
    with (tree.root / "etc/passwd").open("a") as passwd:
        passwd.write(case.passwd)
    hosts_before = _host_accounts()
    with FakeFabric() as fab:
        _imds_with_key(fab, KEY, adminUsername=case.username)
        vm = Env(tmp, fab.url)
        vm.set("fabric", **FAST).set("configure", steps=ALL_STEPS).set("user", groups=[])
        proc, elapsed = bounded_run(vm)
        result = _result(case.name, vm, fab, proc, elapsed)
        problems = []
        described = " ".join(r.get("description") or "" for r in fab.failure_reports())
        if case.reason not in described:
            problems.append("ProvisioningFailed does not say why")
        if (result.last_error or {}).get("data", {}).get("step") != "user":
            problems.append("last_error does not name the user step")
        if _host_accounts() != hosts_before:
            problems.append("this machine's account files changed")
        result.detail = {"problems": problems, "description": described}
        return result


@dataclasses.dataclass(frozen=True)
class Hardening:
    name: str
    run: Callable[[Path], Result]
    expect: str = "done"  # "done" or "failed"
    reported: bool = False


def _hardening() -> Iterator[Hardening]:
    for p in PLANTS:
        yield Hardening(p.name, functools.partial(run_plant, p))
    for which in PLACEHOLDER_UUIDS:
        yield Hardening(f"identity: SMBIOS UUID {which} (vm id from IMDS; reboot asks nothing)",
                        functools.partial(run_placeholder_uuid, which))
    yield Hardening("identity: DONE record without vm_id (a new VM)", run_done_record_without_vm_id)
    for n in NAMES:
        yield Hardening(n.name, functools.partial(run_name, n), expect="failed", reported=True)


HARDENING = list(_hardening())
