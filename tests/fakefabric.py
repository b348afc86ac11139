"""A loopback fake of the Azure fabric: WireServer (goal state, health) and IMDS on one 127.0.0.1 port.

Each route replays a script of answers, then behaves like a healthy fabric: a valid goal state, a health
report accepted only when it names the current incarnation, container and instance (else 400, or 410 for a
stale incarnation), an IMDS document with the configured computerName. Every request is logged with
monotonic and wall timestamps, so tests and benchmarks can assert order and latency.

Script answer keys: status, body, headers, delay (seconds before answering), action:
  "reset"  close the socket with RST, no answer      "close"  close without an answer
  "hang"   accept, read the request, never answer (until `delay` or the server stops)
  "slow"   send the body one byte per `delay` seconds  "bump"  answer 410 and bump the incarnation

Runs as a library (`with FakeFabric(...) as fab`) or a process (`python tests/fakefabric.py --help`). It only
ever binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

GOAL_STATE = """<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>{incarnation}</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState><StopRolesDeadlineHint>300000</StopRolesDeadlineHint></Machine>
  <Container>
    <ContainerId>{container_id}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{instance_id}</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"""

VERSIONS = """<?xml version="1.0" encoding="utf-8"?>
<Versions><Preferred><Version>2012-11-30</Version></Preferred>
<Supported><Version>2012-11-30</Version><Version>2015-04-05</Version></Supported></Versions>
"""


def route_of(method: str, path: str) -> str:
    parts = urlsplit(path)
    if method == "GET" and parts.path == "/" and "comp=versions" in parts.query:
        return "versions"
    if method == "GET" and parts.path in ("/machine", "/machine/") and "comp=goalstate" in parts.query:
        return "goalstate"
    if method == "POST" and parts.path in ("/machine", "/machine/") and "comp=health" in parts.query:
        return "health"
    if method == "GET" and (parts.path == "/metadata/instance" or parts.path.startswith("/metadata/instance/")):
        return "imds"  # sub-paths (compute/name?format=text) serve the Microsoft article's curl and WALinuxAgent
    if method == "POST" and parts.path == "/provisioning/health":
        return "provisioning_health"
    return "unknown"


def _health_fields(body: str) -> dict[str, str | None]:
    """Read a health report loosely (stdlib only: the fake must not share the agent's parser)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(body)
    if root.tag != "Health":
        raise ValueError("root is not Health")

    def text(path: str) -> str | None:
        found = root.find(path)
        return found.text if found is not None else None

    return {
        "incarnation": text("GoalStateIncarnation"),
        "container_id": text("Container/ContainerId"),
        "instance_id": text("Container/RoleInstanceList/Role/InstanceId"),
        "state": text("Container/RoleInstanceList/Role/Health/State"),
        "substatus": text("Container/RoleInstanceList/Role/Health/Details/SubStatus"),
        "description": text("Container/RoleInstanceList/Role/Health/Details/Description"),
    }


def imds_answer(document: dict[str, Any], path: str) -> tuple[int, bytes, str]:
    """IMDS for /metadata/instance and its sub-paths: a JSON subtree, or a leaf as text with format=text."""
    parts = urlsplit(path)
    node: Any = document
    for key in [k for k in parts.path[len("/metadata/instance"):].split("/") if k]:
        if not isinstance(node, dict) or key not in node:
            return 404, b'{"error": "Not found"}', "application/json"
        node = node[key]
    if "format=text" in parts.query and not isinstance(node, (dict, list)):
        return 200, str(node).encode(), "text/plain; charset=utf-8"
    return 200, json.dumps(node).encode(), "application/json"


class FakeFabric:
    def __init__(self, computer_name: str = "web-01", vm_id: str | None = None, incarnation: str = "1",
                 container_id: str = "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2",
                 instance_id: str = "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0",
                 script: dict[str, list[dict[str, Any]]] | None = None, imds_document: dict[str, Any] | None = None,
                 port: int = 0, log_path: Path | None = None) -> None:
        self.computer_name = computer_name
        self.vm_id = vm_id or str(uuid.uuid4())
        self.incarnation = incarnation
        self.container_id = container_id
        self.instance_id = instance_id
        self.imds_document = imds_document
        self.script: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (script or {}).items()}
        self.log: list[dict[str, Any]] = []
        self.log_path = log_path
        # Called with each logged request, outside the lock: lets a test change the script on an event
        # (say, the first failure report) instead of guessing when it will happen.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        self.port = port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reserve_port(self) -> int:
        """Pick a free port now, listen later (`start()`): for 'the WireServer comes up late' tests."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        return self.port

    def start(self) -> FakeFabric:
        fabric = self

        class Handler(_Handler):
            fake = fabric

        ThreadingHTTPServer.allow_reuse_address = True
        server = _Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        # stop() waits for serve_forever to notice, up to one poll: short, as most tests start and stop one.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeFabric:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting and inspection ------------------------------------------------------------------------
    def set_script(self, route: str, answers: list[dict[str, Any]]) -> None:
        with self._lock:
            self.script[route] = list(answers)

    def next_answer(self, route: str) -> dict[str, Any] | None:
        with self._lock:
            answers = self.script.get(route)
            return answers.pop(0) if answers else None

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(entry)
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        for observe in list(self.observers):
            observe(entry)

    def requests(self, route: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.log if e["route"] == route]

    def ready_reports(self) -> list[dict[str, Any]]:
        return [e for e in self.requests("health") + self.requests("provisioning_health")
                if e["status"] == 200 and e.get("health_state") == "Ready"]

    def failure_reports(self) -> list[dict[str, Any]]:
        return [e for e in self.requests("health") + self.requests("provisioning_health")
                if e["status"] == 200 and e.get("health_state") == "NotReady"]

    def goal_state(self) -> str:
        return GOAL_STATE.format(incarnation=escape(self.incarnation), container_id=escape(self.container_id),
                                 instance_id=escape(self.instance_id))

    def imds(self) -> dict[str, Any]:
        if self.imds_document is not None:
            return self.imds_document
        return {"compute": {"name": self.computer_name, "vmId": self.vm_id, "location": "westeurope",
                            "osProfile": {"computerName": self.computer_name, "adminUsername": "azureuser",
                                          "disablePasswordAuthentication": "true"},
                            "publicKeys": []},
                "network": {"interface": []}}

    def judge_health(self, body: str) -> tuple[int, dict[str, str | None]]:
        """What the real WireServer would say to this report: 200, 410 (stale incarnation) or 400."""
        try:
            found = _health_fields(body)
        except Exception:
            return 400, {}
        if found["state"] not in ("Ready", "NotReady"):
            return 400, found
        if found["incarnation"] != self.incarnation:
            return 410, found
        if found["container_id"] != self.container_id or found["instance_id"] != self.instance_id:
            return 400, found
        return 200, found

    def judge_provisioning_health(self, body: str) -> tuple[int, dict[str, str | None]]:
        try:
            doc = json.loads(body)
        except ValueError:
            return 400, {}
        if not isinstance(doc, dict) or doc.get("state") not in ("Ready", "NotReady"):
            return 400, {}
        details = doc.get("details") or {}
        return 200, {"state": doc["state"], "substatus": details.get("subStatus"),
                     "description": details.get("description"), "incarnation": self.incarnation}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (an agent past its per-call deadline, a killed run) is part of
        the scenarios, not a fault of the fake: no traceback for it. Anything else is still printed."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset, ...
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeFabric
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (40 ms on Linux) and every exchange would look 40 ms slower than the agent really is.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake = self.fake
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        route = route_of(method, self.path)
        entry: dict[str, Any] = {"t": arrived, "wall": time.time(), "method": method, "path": self.path,
                                 "route": route, "headers": dict(self.headers.items()), "body": body,
                                 "incarnation": fake.incarnation, "health_state": None}
        answer = fake.next_answer(route) or {}
        delay = float(answer.get("delay", 0))
        action = answer.get("action")
        if action == "hang":  # logged on arrival, so a test can act while the request is held
            entry.update(status=None, action="hang")
            fake.record(entry)
            fake._stop.wait(delay or None)
            return self._drop(rst=False)
        if delay and action != "slow":
            fake._stop.wait(delay)
        if action in ("reset", "close"):
            entry.update(status=None, action=action)
            fake.record(entry)
            return self._drop(rst=action == "reset")
        if action == "bump":
            fake.incarnation = str(int(fake.incarnation) + 1) if fake.incarnation.isdigit() else fake.incarnation + "1"
            answer = {"status": 410, **{k: v for k, v in answer.items() if k != "action"}}
        status, payload, content_type = self._default(route, method, body, entry)
        if "status" in answer:
            status = int(answer["status"])
        if "body" in answer:
            payload = answer["body"].encode("utf-8") if isinstance(answer["body"], str) else answer["body"]
        entry["status"] = status
        if status != 200:
            entry["health_state"] = None
        entry["t_answer"] = time.monotonic()
        fake.record(entry)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (answer.get("headers") or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if action == "slow":
            for i in range(len(payload)):
                if fake._stop.wait(delay or 1.0):
                    break
                try:
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    break
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _default(self, route: str, method: str, body: str, entry: dict[str, Any]) -> tuple[int, bytes, str]:
        fake = self.fake
        if route == "goalstate":
            if self.headers.get("x-ms-version") != "2012-11-30":
                return 400, b"missing x-ms-version", "text/plain"
            return 200, fake.goal_state().encode(), "text/xml; charset=utf-8"
        if route == "versions":
            return 200, VERSIONS.encode(), "text/xml; charset=utf-8"
        if route == "health":
            status, found = fake.judge_health(body)
            entry["health_state"] = found.get("state")
            entry["description"] = found.get("description")
            return status, b"", "text/plain"
        if route == "provisioning_health":
            status, found = fake.judge_provisioning_health(body)
            entry["health_state"] = found.get("state")
            entry["description"] = found.get("description")
            return status, b"", "text/plain"
        if route == "imds":
            # Case-insensitive: WALinuxAgent sends "Metadata: True" and the real IMDS accepts it.
            if (self.headers.get("Metadata") or "").lower() != "true" or self.headers.get("X-Forwarded-For"):
                return 400, b'{"error": "Bad request. Required metadata header not specified"}', "application/json"
            return imds_answer(fake.imds(), self.path)
        return 404, b"not found", "text/plain"

    def _drop(self, rst: bool) -> None:
        self.close_connection = True
        try:
            if rst:  # SO_LINGER 0: close sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Loopback fake of the Azure WireServer and IMDS.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--log", type=Path, help="append one JSON line per request")
    p.add_argument("--script", type=Path, help="JSON {route: [answers]}")
    p.add_argument("--computer-name", default="web-01")
    p.add_argument("--vm-id")
    p.add_argument("--incarnation", default="1")
    p.add_argument("--listen-delay", type=float, default=0.0, help="seconds before listening")
    args = p.parse_args(argv)
    script = json.loads(args.script.read_text()) if args.script else None
    fake = FakeFabric(computer_name=args.computer_name, vm_id=args.vm_id, incarnation=args.incarnation,
                      script=script, port=args.port, log_path=args.log)
    if args.listen_delay:
        if not args.port:
            fake.reserve_port()
        if args.port_file:
            args.port_file.write_text(str(fake.port))
        time.sleep(args.listen_delay)
    fake.start()
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(fake.port))
        tmp.replace(args.port_file)
    print(f"fake fabric listening on {fake.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
