"""Our rewrite of the procedure in Microsoft's article "Creating generalized images without a provisioning agent".

The document's unit runs two things: a Python script that fetches the goal state once and posts one Ready
(stdlib `http.client` + `xml.etree`, no retries, exit 0 whatever the POST answered), then
`hostnamectl set-hostname $(curl IMDS compute/name)`. This driver does the same steps against a configurable
endpoint: the same requests, the same lack of retries, the same curl call (with `--noproxy '*'`), but the
name goes into `--hostname-file` instead of the machine's hostname.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree

import loopback_guard

loopback_guard.install()


def report_ready(wireserver: str) -> int:
    parts = urlsplit(loopback_guard.check_url(wireserver))
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80)
    print("fetching the goal state")
    conn.request("GET", "/machine?comp=goalstate", headers={"x-ms-version": "2012-11-30"})
    resp = conn.getresponse()
    if resp.status != 200:
        print("the WireServer did not answer 200")
        return 1
    root = ElementTree.fromstring(resp.read().decode("utf-8"))
    container_id = root.findtext("Container/ContainerId")
    instance_id = root.findtext("Container/RoleInstanceList/RoleInstance/InstanceId")
    incarnation = root.findtext("Incarnation")
    print(f"container {container_id} instance {instance_id} incarnation {incarnation}")

    health = ElementTree.Element("Health")
    ElementTree.SubElement(health, "GoalStateIncarnation").text = incarnation
    container = ElementTree.SubElement(health, "Container")
    ElementTree.SubElement(container, "ContainerId").text = container_id
    role = ElementTree.SubElement(ElementTree.SubElement(container, "RoleInstanceList"), "Role")
    ElementTree.SubElement(role, "InstanceId").text = instance_id
    ElementTree.SubElement(ElementTree.SubElement(role, "Health"), "State").text = "Ready"
    body = ElementTree.tostring(health, encoding="unicode", method="xml")
    conn.request("POST", "/machine?comp=health", body=body, headers={
        "x-ms-version": "2012-11-30", "Content-Type": "text/xml;charset=utf-8",
        "x-ms-agent-name": "custom-provisioning"})
    resp = conn.getresponse()
    resp.read()
    print(f"health report answered {resp.status} {resp.reason}")  # the document never checks this status
    conn.close()
    return 0


def hostname_step(imds: str, hostname_file: Path) -> int:
    url = loopback_guard.check_url(f"{imds}/metadata/instance/compute/name?api-version=2019-06-01&format=text")
    done = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", "30", "-H", "metadata: true", url],
                          capture_output=True, check=False)
    name = done.stdout.decode("utf-8", "replace").strip()
    hostname_file.write_text(name + "\n")  # stands in for `hostnamectl set-hostname "$name"`
    return done.returncode


def main() -> int:
    args = loopback_guard.driver_args(__doc__, peer=False)
    try:
        code = report_ready(args.wireserver)
    except (OSError, http.client.HTTPException, ElementTree.ParseError) as e:  # the document's script dies here
        print(f"script failed: {e!r}", file=sys.stderr)
        return 1
    if code:
        return code
    return hostname_step(args.imds, args.hostname_file)


if __name__ == "__main__":
    sys.exit(main())
