"""`make demo [SCENARIO=...]`: a whole provisioning against the project's own fake fabric, touching nothing real.

Starts tests/fakefabric.py on 127.0.0.1 (the only address it ever binds), writes a config whose endpoints
point at it and whose root and state directory are temporary, then runs `azprov` inside a private UTS
namespace (`unshare --uts`) so its sethostname(2) changes only that namespace. While it runs, one timeline
shows both sides: each request the fabric received (method, path, status, time to answer) beside azprov's
own lines (state transitions, retries). Then `azprov status`. Without unshare (or without the privilege for
it) the demo falls back to `hostname.method = "file"` and says so. The temporary directory is removed at
the end (`--keep` keeps it).

Scenarios: ready (default), 503 (a 503 storm on the health report, healed by retrying), 410 (the goal
state changes under the report: refetch and report again), imds-down (IMDS refuses every connection:
provisioning fails, the platform is told NotReady with the reason, then `azprov status --long`), all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Scenario(NamedTuple):
    title: str
    script: dict[str, list[dict[str, Any]]]  # the fake fabric's answers, per route, before it behaves
    imds_down: bool = False  # point IMDS at a closed loopback port


SCENARIOS = {
    "ready": Scenario("a healthy fabric: Ready, then the hostname", {}),
    "503": Scenario("the WireServer answers the health report with 503 four times (Retry-After: 0.2), then heals",
                    {"health": [{"status": 503, "headers": {"Retry-After": "0.2"}}] * 4}),
    "410": Scenario("the goal state changes under the health report: 410 Gone, refetch, report again",
                    {"health": [{"action": "bump"}]}),
    "imds-down": Scenario("IMDS refuses every connection: provisioning fails and the platform is told why",
                          {}, imds_down=True),
}


def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


def closed_port() -> int:
    """A loopback port nobody listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Timeline:
    """azprov's lines and the fabric's requests on one clock, in time order: each side's events arrive a
    little late (a pipe, a log file), so they are held for a moment and printed sorted."""

    HOLD = 0.25  # seconds an event waits for earlier ones from the other side

    def __init__(self) -> None:
        self.start = time.time()
        self.lock = threading.Lock()
        self.pending: list[tuple[float, int, str, str]] = []
        self.count = 0

    def say(self, who: str, text: str, at: float | None = None) -> None:
        with self.lock:
            self.count += 1
            self.pending.append((time.time() if at is None else at, self.count, who, text))

    def flush(self, everything: bool = False) -> None:
        with self.lock:
            self.pending.sort()
            cut = time.time() - self.HOLD
            ready = [e for e in self.pending if everything or e[0] < cut]
            self.pending = self.pending[len(ready):]
        for at, _, who, text in ready:
            print(f"  +{at - self.start:7.3f}s  {who:<7}{text}", flush=True)

    def fabric(self, entry: dict[str, Any]) -> None:
        status = entry.get("status")
        answered = entry.get("t_answer")
        took = f"{(answered - entry['t']) * 1000:7.1f} ms" if isinstance(answered, (int, float)) else ""
        shown = str(status) if status is not None else entry.get("action", "-")
        health = f"  {entry['health_state']}" if entry.get("health_state") else ""
        self.say("fabric", f"{entry['method']:<5}{entry['path'][:46]:<47}{shown:>6} {took}{health}", entry["wall"])


def follow(log: Path, timeline: Timeline, stop: threading.Event) -> None:
    """Tail the fabric's request log (one JSON line per request) onto the timeline, and print it."""
    offset = 0
    while True:
        timeline.flush()
        done = stop.is_set()
        try:
            with open(log, encoding="utf-8") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith("\n"):
                        break
                    offset += len(line.encode("utf-8"))
                    timeline.fabric(json.loads(line))
        except FileNotFoundError:
            pass
        if done:
            timeline.flush(everything=True)
            return
        time.sleep(0.02)


def run_scenario(name: str, scenario: Scenario, isolated: bool, keep: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="azprov-demo-"))
    root, state = tmp / "root", tmp / "state"
    (root / "etc").mkdir(parents=True)
    (tmp / "product_uuid").write_text(str(uuid.uuid4()).upper() + "\n")
    (tmp / "script.json").write_text(json.dumps(scenario.script))
    port_file, log = tmp / "port", tmp / "fabric.jsonl"
    fabric = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakefabric.py"), "--port-file", str(port_file),
                               "--log", str(log), "--computer-name", "demo-vm-01", "--script",
                               str(tmp / "script.json")], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if port_file.exists():
                break
            time.sleep(0.05)
        port = port_file.read_text().strip()
        imds = f"http://127.0.0.1:{closed_port()}" if scenario.imds_down else f"http://127.0.0.1:{port}"
        method = "sethostname" if isolated else "file"
        config = tmp / "azprov.toml"
        config.write_text(f"""[fabric]
wireserver_url = "http://127.0.0.1:{port}"
imds_url = "{imds}"
network_timeout = 10.0
wireserver_timeout = 20.0
imds_timeout = 3.0
request_timeout = 2.0
[paths]
state_dir = "{state}"
root = "{root}"
[identity]
product_uuid_path = "{tmp / 'product_uuid'}"
[hostname]
method = "{method}"
""")
        env = {**os.environ, "AZPROV_CONFIG_DIR": str(tmp / "system-config"), "PYTHONUNBUFFERED": "1"}
        env.pop("JOURNAL_STREAM", None)
        azprov = str(BIN / "azprov")
        print(f"\n==== scenario {name}: {scenario.title}")
        print(f"== fake fabric on 127.0.0.1:{port}" + (f", IMDS at {imds} (nobody listens)" if scenario.imds_down
                                                      else "") + f"; root {root}; hostname method {method!r}")
        if isolated:
            print("== azprov runs in a private UTS namespace (unshare --uts)")
            cmd = ["unshare", "--uts", "--", "sh", "-c",
                   '"$0" --config "$1"; rc=$?; echo "hostname inside the namespace: $(hostname)"; exit $rc',
                   azprov, str(config)]
        else:
            print("== unshare --uts is not available here: only <root>/etc/hostname is written")
            cmd = [azprov, "--config", str(config)]
        print("== timeline: the fabric's side (method, path, status, time to answer) and azprov's\n", flush=True)
        timeline, stop = Timeline(), threading.Event()
        tail = threading.Thread(target=follow, args=(log, timeline, stop), daemon=True)
        tail.start()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.rstrip("\n")
            timeline.say("agent", text[len("azprov: "):] if text.startswith("azprov: ") else text)
        rc = proc.wait()
        time.sleep(0.1)  # the last request's log line
        stop.set()
        tail.join(5)
        told = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        reports = [e for e in told if e.get("status") == 200 and e.get("health_state")]
        print("\n== what the platform was told:")
        for e in reports:
            print(f"  {e['health_state']}" + (f": {e['description']}" if e.get("description") else ""))
        if not reports:
            print("  nothing")
        print(f"hostname outside (untouched): {os.uname().nodename}")
        hostname = root / "etc" / "hostname"
        print(f"{hostname}: {hostname.read_text().strip() if hostname.exists() else '(not written)'}")
        long = ["--long"] if rc != 0 else []
        print(f"\n== azprov status {' '.join(long)}\n", flush=True)
        subprocess.run([azprov, "--config", str(config), "status", *long], env=env)
        if name == "ready":
            print("\n== a second run (a reboot of the same VM) does nothing:\n", flush=True)
            subprocess.run([azprov, "--config", str(config)], env=env)
        print(f"\n== azprov exit code: {rc}" + (f"; files kept in {tmp}" if keep else ""))
        return rc
    finally:
        fabric.terminate()
        fabric.wait(5)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scenario", default=os.environ.get("SCENARIO") or "ready",
                   choices=[*SCENARIOS, "all"], help="what the fabric does (default: ready)")
    p.add_argument("--keep", action="store_true", help="keep the temporary root, state and fabric log")
    args = p.parse_args(argv)
    isolated = can_unshare()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    codes = {name: run_scenario(name, SCENARIOS[name], isolated, args.keep) for name in names}
    expected = {name: 1 if SCENARIOS[name].imds_down else 0 for name in names}
    if len(names) > 1:
        print("\n==== " + ", ".join(f"{n}: exit {c}" for n, c in codes.items()))
    return 0 if codes == expected else 1  # imds-down is meant to fail: the demo succeeds when it does


if __name__ == "__main__":
    sys.exit(main())
