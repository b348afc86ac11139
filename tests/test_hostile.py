"""Hostile and broken input: XML, IMDS JSON, config, concurrency, proxies.

Each must give a clear error (the reason names the input), a FAILED or retried state as appropriate, no
traceback, no hang, and nothing outside the configured root touched.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Env
from fakefabric import GOAL_STATE, FakeFabric
from scenarios import DEAD_PROXY, wait_for

from statemachine import fabric as fabric_client
from statemachine.errors import FabricError, GoalStateError, MetadataError
from states.configure import Facts, hostname
from states.configuring import Instance, parse_instance
from states.goalstate import parse_goal_state

IDS = {"incarnation": "7", "container_id": "c-1", "instance_id": "i-1"}
BODY = GOAL_STATE.format(**IDS)
PLAIN = BODY.split("?>", 1)[1]  # without the XML declaration


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOPSECRET-CONTENT")
    return path


# ---- XML: parser level ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def fifty_mb_goal_state() -> bytes:
    return ("<GoalState>" + "x" * (50 << 20) + "</GoalState>").encode()  # built once, not once per case


def hostile_goal_states(secret: Path) -> dict[str, bytes]:
    laughs = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return {
        "xxe-local-file": (f'<?xml version="1.0"?><!DOCTYPE GoalState [<!ENTITY x SYSTEM "file://{secret}">]>'
                           + PLAIN.replace(">7<", ">&x;<")).encode(),
        "billion-laughs": (f"<?xml version=\"1.0\"?><!DOCTYPE GoalState [{laughs}]>"
                           + PLAIN.replace(">7<", ">&l9;<")).encode(),
        "parameter-entities": (f'<?xml version="1.0"?><!DOCTYPE GoalState [<!ENTITY % p SYSTEM "file://{secret}">'
                               f'<!ENTITY % q "<!ENTITY y \'%p;\'>"> %q;]>' + PLAIN.replace(">7<", ">&y;<")).encode(),
        "external-dtd": ('<?xml version="1.0"?><!DOCTYPE GoalState SYSTEM "http://127.0.0.1:9/evil.dtd">'
                         + PLAIN).encode(),
        "html-error-page": b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
        "50-MB": fifty_mb_goal_state(),
        "not-utf8": BODY.replace("c-1", "c-\xe9").encode("latin-1"),
        "duplicate-incarnation": BODY.replace("<Incarnation>7</Incarnation>",
                                              "<Incarnation>7</Incarnation><Incarnation>8</Incarnation>").encode(),
        "duplicate-container": BODY.replace("</Container>", "</Container><Container><ContainerId>x</ContainerId>"
                                            "</Container>").encode(),
        "empty-id": BODY.replace(">c-1<", "> \n <").encode(),
    }


@pytest.mark.parametrize("case", list(hostile_goal_states(Path("/x"))))
def test_hostile_goal_state_is_refused_with_a_reason_naming_it(case: str, tmp_path: Path) -> None:
    secret = secret_file(tmp_path)
    body = hostile_goal_states(secret)[case]
    started = time.monotonic()
    with pytest.raises(GoalStateError) as info:
        parse_goal_state(body)
    assert time.monotonic() - started < 1.0  # no expansion, no network, no 50 MB tree
    assert info.value.reason.startswith("goal state")
    assert "TOPSECRET" not in str(info.value) + json.dumps(info.value.as_dict())


@pytest.mark.parametrize("case, body", [
    ("utf-16-bom", BODY.replace('encoding="utf-8"', 'encoding="utf-16"').encode("utf-16")),
    ("utf-8-bom", b"\xef\xbb\xbf" + BODY.encode()),
    ("latin-1-declared", BODY.replace('encoding="utf-8"', 'encoding="iso-8859-1"').encode("latin-1")),
    ("namespaced-default", BODY.replace("<GoalState ", '<GoalState xmlns="http://schemas.microsoft.com/x" ').encode()),
    ("namespaced-prefix", BODY.replace("<GoalState ", '<g:GoalState xmlns:g="urn:g" ')
     .replace("</GoalState>", "</g:GoalState>").encode()),
    ("whitespace-around-ids", BODY.replace(">7<", ">\n  7\t<").replace(">c-1<", ">  c-1 <")
     .replace(">i-1<", ">\ni-1\n<").encode()),
    ("comments-and-pis", BODY.replace("<Container>", "<Container><!-- x --><?pi y?>").encode()),
])
def test_odd_but_legitimate_goal_states_parse(case: str, body: bytes) -> None:
    gs = parse_goal_state(body)
    assert (gs.incarnation, gs.container_id, gs.instance_id) == ("7", "c-1", "i-1")


def test_xml_parsing_touches_no_file_and_no_network(tmp_path: Path) -> None:
    """An external DTD / entity pointing at a listening loopback port must not be fetched."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    body = (f'<!DOCTYPE GoalState SYSTEM "http://127.0.0.1:{port}/x.dtd" [<!ENTITY % e SYSTEM '
            f'"http://127.0.0.1:{port}/e"> %e;]>' + PLAIN).encode()
    with pytest.raises(GoalStateError):
        parse_goal_state(body)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


# ---- XML and slow answers end to end ----------------------------------------------------------------------

# One case end to end in the quick suite; the parser's answer to each is tested in-process.
@pytest.mark.parametrize("case", ["xxe-local-file"] + [pytest.param(c, marks=pytest.mark.slow) for c in (
    "billion-laughs", "parameter-entities", "html-error-page", "not-utf8")])
def test_one_hostile_goal_state_is_retried_then_ready(case: str, vm: Env, fabric: FakeFabric,
                                                      tmp_path: Path) -> None:
    secret = secret_file(tmp_path)
    fabric.set_script("goalstate", [{"status": 200, "body": hostile_goal_states(secret)[case]}])
    out = vm.call()
    assert out.returncode == 0, out.stdout
    assert "goal state" in out.stdout and "retrying" in out.stdout
    assert "TOPSECRET" not in out.stdout + vm.state_file.read_text()
    assert len(fabric.ready_reports()) == 1


@pytest.mark.slow
def test_persistently_hostile_goal_state_fails_within_budget_naming_it(vm: Env, fabric: FakeFabric,
                                                                      tmp_path: Path) -> None:
    body = hostile_goal_states(secret_file(tmp_path))["xxe-local-file"].decode()
    fabric.set_script("goalstate", [{"status": 200, "body": body}] * 1000)
    vm.set("fabric", wireserver_timeout=1.5)
    started = time.monotonic()
    out = vm.run(timeout=30)
    assert out.returncode == 1 and time.monotonic() - started < 5
    error = json.loads(vm.state_file.read_text())["last_error"]
    assert error["data"]["budget_key"] == "fabric.wireserver_timeout"
    assert error["data"]["last_reason"] == "goal state carries a DOCTYPE, which the fabric never sends"
    assert "Traceback" not in out.stdout + out.stderr


@contextmanager
def trickling_server(at_once: bytes, trickled: bytes, interval: float) -> Iterator[str]:
    """A one-connection HTTP server on 127.0.0.1 that sends `at_once`, then `trickled` one byte per
    `interval`: a server that is alive (each byte resets a socket timeout) but never finishes. Yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(at_once)
                for i in range(len(trickled)):
                    if stop.wait(interval):
                        return
                    conn.sendall(trickled[i:i + 1])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        stop.set()
        sock.close()


@pytest.mark.parametrize("what, at_once, trickled", [
    ("status line", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("headers", b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 200 + b"\r\nContent-Length: 0\r\n\r\n"),
    ("body", b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", b"b" * 200),
])
def test_per_call_deadline_holds_against_a_byte_per_interval(what: str, at_once: bytes, trickled: bytes) -> None:
    http = fabric_client.Http(fabric_client.new_session(), timeout=0.6)
    started = time.monotonic()
    with trickling_server(at_once, trickled, 0.05) as url, pytest.raises(FabricError) as info:
        http.request("GET", url, {}, endpoint="goalstate")
    assert time.monotonic() - started < 1.0, what
    assert info.value.retryable and info.value.supporting_data["endpoint"] == "goalstate"


def test_per_call_timeout_is_cut_to_the_remaining_budget() -> None:
    http = fabric_client.Http(fabric_client.new_session(), timeout=30.0, remaining=lambda: 0.3)
    started = time.monotonic()
    with trickling_server(b"", b"HTTP/1.1 200 OK\r\n", 1.0) as url, pytest.raises(FabricError) as info:
        http.request("GET", url, {}, endpoint="imds")
    assert time.monotonic() - started < 0.8 and info.value.retryable


# ---- IMDS JSON ---------------------------------------------------------------------------------------------

def imds(compute: dict[str, Any]) -> bytes:
    return json.dumps({"compute": compute}).encode()


@pytest.mark.parametrize("body, field", [
    (b"<html>not json</html>", None),
    (b'{"compute": ', None),
    (b"\xff\xfe\x00", None),
    (b"[" * 50000, None),
    (imds({"osProfile": {"computerName": 5}}), "compute.osProfile.computerName"),
    (imds({"publicKeys": "x"}), "compute.publicKeys"),
    (imds({"publicKeys": [1]}), "compute.publicKeys[0]"),
    (imds({"osProfile": []}), "compute.osProfile"),
    (b'{"compute": 3}', ".compute"),
    (b'"just a string"', None),
    (json.dumps({"compute": {"name": "x" * (5 << 20)}}).encode(), None),
])
def test_broken_imds_documents_raise_metadata_error_naming_the_field(body: bytes, field: str | None) -> None:
    with pytest.raises(MetadataError) as info:
        parse_instance(body)
    assert info.value.reason.startswith("instance metadata")
    if field:
        assert info.value.supporting_data["field"] == field
    # Unreadable answers are retried (a glitch); well-formed JSON of the wrong shape is not.
    assert info.value.retryable == (info.value.reason == "instance metadata is not valid JSON")


def test_missing_os_profile_is_not_an_error_but_gives_no_hostname() -> None:
    instance = parse_instance(imds({"name": "vm-1", "vmId": "x"}))
    assert instance.computer_name is None and hostname.choose(Facts(instance))[0] == "vm-1"


INVALID_HOSTNAMES = ["", "a" * 64, "-x", "x-", "x_y", "a;reboot", "$(id)", "`id`", "héllo", "münchen", "x.",
                     "a..b", "a b", "a\nb", "../../etc", "a/b", "\x00"]


@pytest.mark.parametrize("name", INVALID_HOSTNAMES)
def test_invalid_hostnames_are_rejected(name: str) -> None:
    assert hostname.validate(name) is not None
    with pytest.raises(Exception) as info:
        hostname.choose(Facts(Instance(computer_name=name, name=name)))
    assert getattr(info.value, "reason", "") == "no valid hostname in the instance metadata"


@pytest.mark.parametrize("name", ["a", "a" * 63, "web-01", "1234", "a.b-c.d", "A-Z"])
def test_valid_hostnames_are_accepted(name: str) -> None:
    assert hostname.validate(name) is None


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "a;reboot" else pytest.mark.slow)
                                  for n in INVALID_HOSTNAMES if n not in ("\x00",)])
def test_invalid_hostname_end_to_end_is_recoverable_and_writes_nothing(name: str, vm: Env, fabric: FakeFabric) -> None:
    fabric.computer_name = name
    out = vm.call()
    assert out.returncode == 0 and len(fabric.ready_reports()) == 1, out.stdout
    assert vm.hostname() is None  # /etc/hostname under the root never written
    assert vm.call("--status").returncode == 2
    assert sorted(p.name for p in vm.root.rglob("*")) == ["etc"]


@pytest.mark.parametrize("document, field", [
    ({"compute": {"osProfile": {"computerName": 5}}}, "compute.osProfile.computerName"),
    ({"compute": {"publicKeys": "x"}}, "compute.publicKeys"),
])
def test_imds_of_wrong_types_fails_with_a_report_naming_the_field(vm: Env, fabric: FakeFabric,
                                                                  document: dict[str, Any], field: str) -> None:
    fabric.imds_document = document
    out = vm.call()
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    record = json.loads(vm.state_file.read_text())
    assert record["state"] == "failed" and record["last_error"]["data"]["field"] == field
    assert len(fabric.ready_reports()) == 1  # the Ready went out before CONFIGURING
    assert len(fabric.failure_reports()) == 1 and field in fabric.failure_reports()[0]["description"]


# ---- config ------------------------------------------------------------------------------------------------

def safe_system_layer(vm: Env) -> None:
    """Put the loopback config in the system layer, so a file under test that azprov (wrongly) accepts can
    still only reach the fake fabric and the temporary root: never the real endpoints or /var/lib."""
    system = vm.tmp / "system-config"
    system.mkdir(exist_ok=True)
    (system / "azprov.toml").write_text(vm.config_path.read_text())


@pytest.mark.parametrize("text, named", [
    ("[fabric]\nwireserver_ur = \"http://x\"\n", "fabric.wireserver_ur"),
    ("[fabrik]\nx = 1\n", "fabrik"),
    ("[fabric]\nnetwork_timeout = \"soon\"\n", "fabric.network_timeout"),
    ("[fabric]\nnetwork_timeout = true\n", "fabric.network_timeout"),
    ("[fabric]\nnetwork_timeout = -1\n", "fabric.network_timeout"),
    ("[fabric]\nnetwork_timeout = nan\n", "fabric.network_timeout"),
    ("[fabric]\nrequest_timeout = inf\n", "fabric.request_timeout"),
    ("[fabric]\nimds_timeout = 1e300\n", "fabric.imds_timeout"),
    ("[paths]\nroot = \"relative\"\n", "paths.root"),
    ("[hostname]\nmethod = \"shell\"\n", "hostname.method"),
    ("[configure]\nsteps = [\"hostname\", 3]\n", "configure.steps"),
    ("fabric = 3\n", "fabric"),
    ("[fabric]\nwireserver_url = \"http://x\"\n[fabric]\n", "line 3"),
    ("[fabric\nwireserver_url = 1\n", "line 1"),
    ("[log]\nlevel = \"info\"\nlevel = \"debug\"\n", "line 3"),
])
def test_bad_config_exits_78_naming_the_key_or_line(vm: Env, fabric: FakeFabric, text: str, named: str) -> None:
    safe_system_layer(vm)
    vm.config_path.write_text(text)
    out = vm.call()
    assert out.returncode == 78, out.stdout + out.stderr
    assert named in out.stderr and str(vm.config_path) in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    # Never provisions half-configured, but tells the platform why: one ProvisioningFailed, no Ready.
    assert not fabric.ready_reports()
    [failure] = fabric.failure_reports()
    assert named in failure["description"]


# Every kind in-process (cli.main); the console script (launch) as a process too, for the fifo here (a read that
# must not block) and for every kind in the slow suite.
@pytest.mark.parametrize("entry, kind", [(e, k) if e == "in-process" or k == "fifo" else
                                         pytest.param(e, k, marks=pytest.mark.slow)
                                         for e in ("in-process", "statemachine.launch")
                                         for k in ("directory", "missing", "not-utf8", "fifo", "device")])
def test_unreadable_config_exits_78(vm: Env, fabric: FakeFabric, kind: str, entry: str) -> None:
    safe_system_layer(vm)
    path = vm.tmp / "odd.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"[log]\nlevel = \"\xff\"\n")
    elif kind == "fifo":
        os.mkfifo(path)  # nobody writes: reading it must not block the boot
    elif kind == "device":
        path = Path("/dev/zero")  # endless: must not be read to the end
    if entry == "in-process":
        from conftest import call_cli
        out = call_cli(["--config", str(path)], vm.env())
    else:
        argv = [*vm.argv()[:2], entry, "--config", str(path)]
        out = subprocess.run(argv, env=vm.env(), capture_output=True, text=True, timeout=10, cwd=REPO)
    assert out.returncode == 78 and str(path) in out.stderr, out.stdout + out.stderr
    assert not fabric.ready_reports() and len(fabric.failure_reports()) == 1


def test_unreadable_system_drop_in_exits_78(vm: Env, fabric: FakeFabric) -> None:
    system = vm.tmp / "system-config"
    (system / "azprov.toml.d").mkdir(parents=True)
    (system / "azprov.toml.d" / "50-broken.toml").write_text("[fabric]\nnetwork_timeout = \"x\"\n")
    out = vm.call()
    assert out.returncode == 78 and "50-broken.toml" in out.stderr and "fabric.network_timeout" in out.stderr


def test_largest_accepted_timeouts_still_run(vm: Env, fabric: FakeFabric) -> None:
    big = 365 * 86400.0
    vm.set("fabric", network_timeout=big, wireserver_timeout=big, imds_timeout=big, request_timeout=big)
    out = vm.call()
    assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr


# ---- concurrency, environment -------------------------------------------------------------------------------

@pytest.mark.slow  # the lock's wait and hand-over are tested in-process in tests/test_runner.py
def test_two_runs_at_once_one_provisions_the_other_waits(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"status": 200, "delay": 1.0, "body": fabric.goal_state()}])
    first = vm.popen()
    wait_for(lambda: fabric.requests("goalstate") or (vm.state_dir / "lock").exists())
    second = vm.popen()
    statuses = []
    while first.poll() is None or second.poll() is None:
        out = vm.run("--status", "--json", timeout=10)  # never blocks on the lock
        statuses.append((out.returncode, json.loads(out.stdout)["state"]))
        time.sleep(0.1)
    out1, _ = first.communicate()
    out2, _ = second.communicate()
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert len(fabric.ready_reports()) == 1 and len(fabric.requests("imds")) == 1
    assert "waiting" in out1 + out2 and "already provisioned" in out1 + out2
    assert statuses and all(code == 0 for code, _ in statuses)
    assert {"goalstate", "done"} & {state for _, state in statuses}


def test_status_wait_returns_when_the_run_ends(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("imds", [{"status": 200, "delay": 0.8, "body": json.dumps(fabric.imds())}])
    run = vm.popen()
    wait_for(lambda: vm.state_file.exists())
    waited = vm.call("--status", "--json", "--wait")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "done"
    run.communicate(timeout=20)


def test_dead_proxy_in_the_environment_changes_nothing(vm: Env, fabric: FakeFabric) -> None:
    proxies = {k: DEAD_PROXY for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                                       "ALL_PROXY")}
    proxies["no_proxy"] = proxies["NO_PROXY"] = ""
    out = vm.call(env=proxies)
    assert out.returncode == 0 and "retrying" not in out.stdout, out.stdout
    assert len(fabric.ready_reports()) == 1


def test_sigint_and_sigterm_while_waiting_for_the_lock(vm: Env, fabric: FakeFabric) -> None:
    fabric.set_script("goalstate", [{"action": "hang", "delay": 30}])
    vm.set("fabric", request_timeout=20.0)
    first = vm.popen()
    wait_for(lambda: fabric.requests("goalstate"))
    second = vm.popen()
    # Signal it once it is waiting, not after a guessed delay: a slow interpreter start is not the test.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(second.stdout or ()), daemon=True)
    reader.start()
    wait_for(lambda: any("holds the lock" in line for line in lines), timeout=60)
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=5)
    reader.join(timeout=5)
    out = "".join(lines)
    assert second.returncode == 143 and "Traceback" not in out
    assert "terminated before provisioning started" in out
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=5)
    assert first.returncode == 143


def test_nothing_outside_the_root_and_state_dir_is_touched(vm: Env, fabric: FakeFabric) -> None:
    """A whole run (fault, retry, hostname) writes only under tmp: the root, the state dir, nothing else."""
    fabric.set_script("goalstate", [{"status": 500}])
    before = {p: p.stat().st_mtime_ns for p in vm.tmp.rglob("*")}
    etc_hostname = Path("/etc/hostname")
    etc_before = etc_hostname.stat().st_mtime_ns if etc_hostname.exists() else None
    host_before = socket.gethostname()
    assert vm.call().returncode == 0
    changed = sorted(str(p.relative_to(vm.tmp)) for p in vm.tmp.rglob("*")
                     if p not in before or p.stat().st_mtime_ns != before[p])
    assert all(c in ("root/etc", "root/etc/hostname", "state") or c.startswith("state/") for c in changed), changed
    assert socket.gethostname() == host_before
    assert (etc_hostname.stat().st_mtime_ns if etc_hostname.exists() else None) == etc_before
    assert stat.S_IMODE(vm.state_dir.stat().st_mode) == 0o700


# ---- the whole run under strace: every write and every connect -----------------------------------------------

_WRITE_CALLS = ("openat", "open", "creat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir",
                "mkdirat", "rmdir", "chmod", "fchmodat", "chown", "fchownat", "lchown", "symlink", "symlinkat",
                "link", "linkat", "truncate", "sethostname", "setdomainname", "connect")


_AT_PATH = re.compile(r'(?:\d+|AT_FDCWD)<([^>]*)>, "([^"]*)"')  # dirfd</its/path>, "name" -> "/its/path/name"


def _absolute(m: re.Match[str]) -> str:
    directory, name = m.group(1), m.group(2)
    return f'"{name if name.startswith("/") else directory + "/" + name}"'


@pytest.mark.skipif(not __import__("shutil").which("strace"), reason="strace not installed")
@pytest.mark.parametrize("script", [
    # The clean run's writes are also checked in-process by test_nothing_outside_the_root_and_state_dir_is_touched.
    pytest.param({}, id="clean-run", marks=pytest.mark.slow),
    pytest.param({"goalstate": [{"status": 500}], "imds": [{"status": 200, "body": '{"compute": 5}'}]},
                 id="retry-then-failed-report"),
])
def test_strace_shows_writes_only_under_tmp_and_connects_only_to_loopback(
        vm: Env, fabric: FakeFabric, script: dict[str, Any]) -> None:
    for route, answers in script.items():
        fabric.set_script(route, answers)
    trace = vm.tmp / "strace.log"
    # -y names every descriptor's path: writes go relative to directory descriptors (openat-style walks).
    argv = ["strace", "-f", "-qq", "-y", "-e", "trace=" + ",".join(_WRITE_CALLS), "-e", "signal=none",
            "-o", str(trace), *vm.argv()]
    out = subprocess.run(argv, env={**vm.env(), "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    tmp = str(vm.tmp)
    seen = []
    for line in trace.read_text().splitlines():
        call = line.split(None, 1)[1] if " " in line else line
        if call.startswith("<..."):
            continue  # the second half of a call split between threads: its first half was checked
        name = call.split("(", 1)[0]
        seen.append(call)
        if name == "connect":
            if "AF_INET" in call or "AF_INET6" in call:
                assert 'inet_addr("127.0.0.1")' in call or "::1" in call, call
            continue
        if name in ("sethostname", "setdomainname"):
            raise AssertionError(f"hostname changed outside a UTS namespace: {call}")
        if name in ("openat", "open") and not any(f in call for f in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")):
            continue  # reading is fine
        if "= -1" in call:
            continue  # a refused attempt changed nothing
        call = _AT_PATH.sub(_absolute, call)
        paths = re.findall(r'"([^"]*)"', call)
        assert paths, call
        assert all(p.startswith((tmp, "/dev/null", "/dev/tty", "/proc/self/")) for p in paths), call
    # The trace saw the run's real work, so the checks above were not vacuous.
    assert any(c.startswith("rename") and "state.json" in c for c in seen)
    assert any(c.startswith("connect") and "127.0.0.1" in c for c in seen)
