"""Run the rest of a benchmark inside a private network namespace with only loopback up.

`reexec_inside()` starts this same script again under `unshare --net` (`--map-root-user` as well when not
root) after `ip link set lo up`, and returns its exit status; the child sees `BENCH_NETNS=1` and calls
`assert_inside()`, which refuses to go on unless `lo` is the only interface. Agents, peers and the article's
script then cannot send a packet off this machine, whatever address they were given or have built in.
Preparation that needs the network (apt-get download, pip) happens before the re-exec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MARK = "BENCH_NETNS"


def inside() -> bool:
    return os.environ.get(MARK) == "1"


def interfaces() -> list[str]:
    """This network namespace's interfaces (/sys/class/net shows the namespace sysfs was mounted in)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def assert_inside() -> None:
    found = interfaces()
    if found != ["lo"]:
        raise SystemExit(f"benchmark: expected a private network namespace with only 'lo', found {found}")


def command(argv: list[str]) -> list[str]:
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    if unshare is None:
        raise SystemExit("benchmark: `unshare` (util-linux) is needed to run the agents in a private network "
                         "namespace")
    flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    return [unshare, *flags, "--", "/bin/sh", "-c", f'{ip} link set lo up && exec "$@"', "sh", *argv]


def reexec_inside(script: str, args: list[str]) -> int:
    env = {**os.environ, MARK: "1"}
    return subprocess.run(command([sys.executable, script, *args]), env=env, check=False).returncode
