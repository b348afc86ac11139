"""Error text keeps its cause: transport failures in our words, config errors as `file:line: key: reason`.

The pure functions (`fabric.transport_cause`, `config.find_line`, `ConfigError.__str__`) are tested on
exception chains and documents built here; the fake fabric and one real run check what an operator then sees
in the retry line, the record, the ProvisioningFailed description and `--status --long`.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from pathlib import Path

import pytest
import requests
import urllib3.exceptions
from conftest import Env
from fakefabric import FakeFabric
from hypothesis import given
from hypothesis import strategies as st

from statemachine import config, fabric
from statemachine.errors import AgentError, ConfigError, FabricError


def chained(*layers: BaseException) -> BaseException:
    """`layers[0]` raised while handling `layers[1]`, raised from `layers[2]`, ... (outermost first)."""
    for outer, inner in zip(layers, layers[1:]):
        outer.__cause__ = inner
    return layers[0]


def refused_like_requests() -> BaseException:
    """The chain requests 2 / urllib3 2 build for a refused connect."""
    os_error = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    new_conn = urllib3.exceptions.NewConnectionError(
        None, "HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: "
              "[Errno 111] Connection refused")
    new_conn.__cause__ = os_error
    max_retry = urllib3.exceptions.MaxRetryError(None, "/machine/?comp=goalstate", new_conn)
    return requests.ConnectionError(max_retry)


# ---- transport_cause ---------------------------------------------------------------------------------------

def test_refused_connect_is_named_by_its_errno() -> None:
    assert fabric.transport_cause(refused_like_requests(), 30.0) == "connection refused"


@pytest.mark.parametrize(("code", "phrase"), [
    (errno.ECONNRESET, "connection reset"),
    (errno.EHOSTUNREACH, "no route to host"),
    (errno.ENETUNREACH, "network unreachable"),
    (errno.ECONNREFUSED, "connection refused"),
])
def test_errno_inside_a_protocol_error(code: int, phrase: str) -> None:
    inner = OSError(code, "whatever the C library says")
    error = requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", inner))
    assert fabric.transport_cause(error, 30.0) == phrase


def test_unlisted_errno_keeps_the_system_words_and_the_name() -> None:
    error = requests.ConnectionError(OSError(errno.EMFILE, "Too many open files"))
    assert fabric.transport_cause(error, 30.0) == "too many open files (EMFILE)"


def test_name_resolution() -> None:
    inner = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    error = chained(requests.ConnectionError("HTTPConnectionPool(...)"),
                    urllib3.exceptions.NameResolutionError("wireserver", None, inner),
                    inner)
    assert fabric.transport_cause(error, 30.0) == "name resolution failed (name or service not known)"


def test_connect_timeout_says_connect_and_the_seconds() -> None:
    error = chained(requests.ConnectTimeout("HTTPConnectionPool(host='x', port=80): Max retries exceeded"),
                    urllib3.exceptions.ConnectTimeoutError(None, "Connection to x timed out. (connect timeout=30)"),
                    TimeoutError("timed out"))
    assert fabric.transport_cause(error, 30.0) == "connect timed out after 30 s"


def test_read_timeout_gives_the_calls_timeout() -> None:
    error = chained(requests.ReadTimeout("HTTPConnectionPool(host='x', port=80): Read timed out. (read timeout=2.5)"),
                    TimeoutError("timed out"))
    assert fabric.transport_cause(error, 2.5) == "timed out after 2.5 s"
    assert fabric.transport_cause(TimeoutError("timed out"), 0.123456) == "timed out after 0.12 s"


def test_a_refused_new_connection_is_not_a_timeout() -> None:
    # urllib3 makes NewConnectionError a ConnectTimeoutError subclass; only the errno tells them apart.
    new_conn = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection")
    assert "timed out" not in fabric.transport_cause(new_conn, 30.0)


def test_closed_and_cut_short_answers() -> None:
    closed = urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response"))
    assert fabric.transport_cause(requests.ConnectionError(closed), 30.0) == "connection closed without an answer"
    cut = urllib3.exceptions.ProtocolError("Connection broken", http.client.IncompleteRead(b"ab", 10))
    assert fabric.transport_cause(cut, 30.0) == "answer cut short"


def test_unknown_failure_keeps_the_innermost_text_short() -> None:
    error = chained(requests.RequestException("outer " + "x" * 500), ValueError("the real story " + "y " * 200))
    cause = fabric.transport_cause(error, 30.0)
    assert cause.startswith("the real story") and len(cause) <= 80


def test_a_cycle_in_the_chain_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert fabric.transport_cause(a, 1.0) in ("a", "b")


EXCEPTIONS = st.sampled_from([ValueError, OSError, RuntimeError, requests.ConnectionError, TimeoutError,
                              urllib3.exceptions.ProtocolError, http.client.HTTPException])


@st.composite
def exception_chains(draw: st.DrawFn) -> BaseException:
    errors: list[BaseException] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(EXCEPTIONS)
        args = draw(st.lists(st.text(max_size=300) | st.integers(-200, 200), max_size=3))
        if errors and draw(st.booleans()):
            args.append(draw(st.sampled_from(errors)))
        errors.append(kind(*args))
        if len(errors) > 1 and draw(st.booleans()):
            errors[-1].__context__ = draw(st.sampled_from(errors[:-1]))
    return errors[-1]


@given(exception_chains(), st.floats(0.001, 1e6))
def test_any_chain_gives_a_short_phrase(error: BaseException, timeout: float) -> None:
    cause = fabric.transport_cause(error, timeout)
    assert cause and len(cause) <= 100


def test_http_cause() -> None:
    assert fabric.http_cause(503) == "HTTP 503 Service Unavailable"
    assert fabric.http_cause(599) == "HTTP 599"


def test_detail_follows_the_reason_in_text() -> None:
    error = FabricError("request to the fabric failed", retryable=True, detail="connection refused",
                        endpoint="imds", error="ConnectionError")
    assert str(error) == "request to the fabric failed: connection refused (endpoint=imds, error=ConnectionError)"
    assert str(AgentError("plain", a=1)) == "plain (a=1)"


# ---- the fake fabric: what the clients raise ----------------------------------------------------------------

def get_goal_state(url: str, timeout: float = 2.0) -> FabricError:
    wire = fabric.WireServer(fabric.Http(fabric.new_session(), timeout), url)
    with pytest.raises(FabricError) as info:
        wire.get_goal_state()
    return info.value


def test_refused_is_short_and_names_the_cause() -> None:
    fake = FakeFabric()
    fake.reserve_port()  # a port nobody listens on
    error = get_goal_state(fake.url)
    assert error.supporting_data["detail"] == "connection refused"
    assert str(error) == "request to the fabric failed: connection refused (endpoint=goalstate, error=ConnectionError)"


@pytest.mark.parametrize(("answer", "detail"), [
    ({"action": "reset"}, "connection reset"),
    ({"action": "close"}, "connection closed without an answer"),
    ({"action": "hang", "delay": 10}, "timed out after 0.5 s"),
    ({"status": 503}, "HTTP 503 Service Unavailable"),
    ({"status": 500}, "HTTP 500 Internal Server Error"),
])
def test_fabric_failures_name_their_cause(fabric: FakeFabric, answer: dict[str, object], detail: str) -> None:
    fabric.set_script("goalstate", [answer])
    error = get_goal_state(fabric.url, timeout=0.5)
    assert error.supporting_data["detail"] == detail
    assert "HTTPConnection" not in str(error) and "\\'" not in str(error) and len(str(error)) < 120


# ---- one real run: the retry line, the record, the report, --status --long ---------------------------------

def test_refused_imds_reads_connection_refused_everywhere(vm: Env, fabric: FakeFabric) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    vm.set("fabric", imds_url=dead, imds_timeout=1.0, request_timeout=0.5)
    out = vm.call()
    assert out.returncode == 1, out.stdout + out.stderr
    retries = [line for line in out.stdout.splitlines() if "step failed; retrying" in line]
    assert retries
    for line in retries:
        assert "request to the fabric failed: connection refused" in line
        assert "HTTPConnection" not in line and len(line) < 200, line
    record = json.loads(vm.state_file.read_text())
    assert record["last_error"]["data"]["last_detail"] == "connection refused"
    [failure] = fabric.failure_reports()
    assert "|last_detail=connection refused|" in failure["description"]
    assert "  last_detail: connection refused" in vm.call("--status", "--long").stdout


# ---- config errors -----------------------------------------------------------------------------------------

def load_error(path: Path, text: str) -> ConfigError:
    """The error loading `text` as the config file at `path` raises (it must raise one)."""
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load([path])
    return info.value


def test_wrong_type_reads_like_a_compiler_message(tmp_path: Path) -> None:
    path = tmp_path / "azprov.toml"
    error = load_error(path, '# comment\n[paths]\nroot = "/"\n\n[fabric]\nimds_url = "http://x"\n'
                             'network_timeout = "3"\n')
    assert str(error) == (f"{path}:7: fabric.network_timeout: configuration value has the wrong type "
                          "(expected a float, got a string)")
    assert error.reason == "configuration value has the wrong type"
    assert list(error.supporting_data) == ["file", "line", "key", "expected", "got"]


@pytest.mark.parametrize(("text", "expected", "got"), [
    ("[user]\ngroups = \"sudo\"\n", "array of strings", "string"),
    ("[user]\ngroups = [\"sudo\", 1]\n", "array of strings", "array containing an integer"),
    ("[agent]\nmax_boot_attempts = 1.5\n", "integer", "float"),
    ("[kvp]\nenabled = \"yes\"\n", "boolean", "string"),
    ("[log]\nlevel = {a = 1}\n", "string", "table"),
    ("[log]\nlevel = 1979-05-27\n", "string", "date"),
])
def test_types_are_named_in_toml_words(tmp_path: Path, text: str, expected: str, got: str) -> None:
    error = load_error(tmp_path / "azprov.toml", text)
    assert error.supporting_data["expected"] == expected and error.supporting_data["got"] == got
    assert error.supporting_data["line"] == 2
    assert "tuple[" not in str(error) and "=str" not in str(error)


def test_invalid_value_and_syntax_error_lead_with_the_place(tmp_path: Path) -> None:
    path = tmp_path / "azprov.toml"
    invalid = load_error(path, '[fabric]\n\nwireserver_url = "http://x/"\n')
    assert str(invalid) == (f'{path}:3: fabric.wireserver_url: configuration value is invalid (got "http://x/": '
                            "must be an http:// or https:// URL without a trailing slash)")
    syntax = load_error(path, "[fabric]\nnetwork_timeout = \n")
    assert str(syntax).startswith(f"{path}:2: configuration file is not valid TOML (")
    assert syntax.supporting_data["line"] == 2


def test_line_is_omitted_when_not_found() -> None:
    error = ConfigError("unknown configuration key", file="/etc/azprov/azprov.toml", key="x.y")
    assert str(error) == "/etc/azprov/azprov.toml: x.y: unknown configuration key"
    assert str(ConfigError("configuration value is invalid", key="fabric.wireserver_url", problem="no host")) == \
        "fabric.wireserver_url: configuration value is invalid (no host)"


def test_load_valid_problems_carry_the_line(tmp_path: Path) -> None:
    path = tmp_path / "azprov.toml"
    path.write_text("[fabric]\nrequest_timeout = \"3\"\n[agent]\nmax_boot_attemps = 3\n")
    _, problems = config.load_valid(path, tmp_path / "none")
    assert [p.supporting_data.get("line") for p in problems] == [2, 4]


def test_status_shows_the_config_error_as_the_run_does(vm: Env) -> None:
    vm.config_path.write_text(vm.config_path.read_text() + "[agent]\nmax_boot_attemps = 3\n")
    line = len(vm.config_path.read_text().splitlines())
    out = vm.call("--status")
    assert f"{vm.config_path}:{line}: agent.max_boot_attemps: unknown configuration key" in out.stdout
    assert json.loads(vm.call("--status", "--json").stdout)["config_error"]["data"]["line"] == line


# ---- find_line ---------------------------------------------------------------------------------------------

DOC = '''# azprov
title = "not a section"

[fabric]  # the endpoints
wireserver_url = "http://127.0.0.1"
"imds_url" = "http://127.0.0.1"
notes = """
[paths]
root = "inside a string"
"""

[ paths ]
root = "/"
user.groups = ["sudo"]
configure = { steps = ["hostname"] }

[[media]]
enabled = true
'''


@pytest.mark.parametrize(("key", "line"), [
    ("fabric", 4), ("fabric.wireserver_url", 5), ("fabric.imds_url", 6), ("paths", 12), ("paths.root", 13),
    ("paths.user.groups", 14), ("paths.configure.steps", 15), ("media", 17), ("title", 2),
    ("fabric.request_timeout", None), ("kvp", None),
])
def test_find_line(key: str, line: int | None) -> None:
    assert config.find_line(DOC, key) == line


def test_find_line_dotted_and_inline_at_the_top() -> None:
    text = 'fabric.request_timeout = true\nuser = { groups = 1 }\n'
    assert config.find_line(text, "fabric.request_timeout") == 1
    assert config.find_line(text, "fabric") == 1
    assert config.find_line(text, "user.groups") == 2


NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
FILLER = st.sampled_from(["", "# a comment", "   ", "# [fake] = 1", 'other = "[x]"'])


@given(st.dictionaries(NAMES, st.dictionaries(NAMES, st.integers(), min_size=1, max_size=5), min_size=1,
                       max_size=5), st.lists(FILLER, min_size=20, max_size=20), st.data())
def test_find_line_finds_every_key_where_it_was_written(sections: dict[str, dict[str, int]], filler: list[str],
                                                        data: st.DataObject) -> None:
    lines: list[str] = []
    where: dict[str, int] = {}
    for i, (section, table) in enumerate(sections.items()):
        lines += [filler[i], f"[{section}]"]
        where[section] = len(lines)
        for j, (key, value) in enumerate(table.items()):
            lines.append(f"{key} = {value}")
            where[f"{section}.{key}"] = len(lines)
            lines.append(filler[(i + j) % len(filler)].replace("other", "X_" + key))
    text = "\n".join(lines) + "\n"
    key = data.draw(st.sampled_from(sorted(where)))
    assert config.find_line(text, key) == where[key]


@given(st.text(max_size=400), st.text(max_size=40))
def test_find_line_never_fails(text: str, key: str) -> None:
    line = config.find_line(text, key)
    assert line is None or 1 <= line <= len(text.splitlines())
