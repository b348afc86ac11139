"""`make demo`: one whole provisioning against the project's own fake fabric, touching nothing real.

Starts tests/fakefabric.py on 127.0.0.1, writes a config whose endpoints point at it and whose root and
state directory are temporary, then runs `azprov` inside a private UTS namespace (`unshare --uts`) so its
sethostname(2) changes only that namespace, and finally prints `azprov --status`. Without unshare (or
without the privilege for it) the demo falls back to `hostname.method = "file"` and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="azprov-demo-"))
    root, state = tmp / "root", tmp / "state"
    (root / "etc").mkdir(parents=True)
    (tmp / "product_uuid").write_text(str(uuid.uuid4()).upper() + "\n")
    port_file = tmp / "port"
    fabric = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakefabric.py"), "--port-file", str(port_file),
                               "--log", str(tmp / "fabric.jsonl"), "--computer-name", "demo-vm-01"],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if port_file.exists():
                break
            time.sleep(0.05)
        port = port_file.read_text().strip()
        isolated = can_unshare()
        method = "sethostname" if isolated else "file"
        config = tmp / "azprov.toml"
        config.write_text(f"""[fabric]
wireserver_url = "http://127.0.0.1:{port}"
imds_url = "http://127.0.0.1:{port}"
[paths]
state_dir = "{state}"
root = "{root}"
[identity]
product_uuid_path = "{tmp / 'product_uuid'}"
[hostname]
method = "{method}"
""")
        env = {**os.environ, "AZPROV_CONFIG_DIR": str(tmp / "system-config")}
        azprov = str(BIN / "azprov")
        print(f"== fake fabric on 127.0.0.1:{port}; root {root}; hostname method {method!r}")
        if isolated:
            print("== running azprov in a private UTS namespace (unshare --uts)\n", flush=True)
            cmd = ["unshare", "--uts", "--", "sh", "-c",
                   '"$0" --config "$1"; rc=$?; echo; echo "hostname inside the namespace: $(hostname)"; exit $rc',
                   azprov, str(config)]
        else:
            print("== unshare --uts is not available here: only <root>/etc/hostname is written\n", flush=True)
            cmd = [azprov, "--config", str(config)]
        rc = subprocess.run(cmd, env=env).returncode
        print(f"hostname outside (untouched):  {os.uname().nodename}")
        print(f"{root}/etc/hostname:  {(root / 'etc' / 'hostname').read_text().strip()}")
        print("\n== azprov --status\n", flush=True)
        subprocess.run([azprov, "--config", str(config), "--status"], env=env)
        print("\n== a second run (a reboot of the same VM) does nothing:\n", flush=True)
        subprocess.run([azprov, "--config", str(config)], env=env)
        print(f"\nazprov exit code: {rc}; files kept in {tmp}")
        return rc
    finally:
        fabric.terminate()
        fabric.wait(5)


if __name__ == "__main__":
    sys.exit(main())
