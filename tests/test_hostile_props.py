"""No JSON-valid input breaks a run: whole IMDS documents and state records drawn from the full JSON value space.

Strings of every code point (lone surrogates and noncharacters included, sent as JSON escapes), integers past
Python's int-string limit, NaN/Infinity/1e999, deep nesting and wrong types, in every field provisioning
reads. Each example is a whole `azprov` run, in-process (`cli.main`) against the loopback fake fabric in a
temporary root: it must end DONE or FAILED with the record saved, the report posted when it provisioned,
no traceback in its output, and `--status --json` agreeing with the record.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from fakefabric import FakeFabric
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine import cli

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=_QUIET)  # make test
MANY = settings(max_examples=200, deadline=None, suppress_health_check=_QUIET)  # make test-slow
STEPS = ["hostname", "user", "ssh_keys"] if os.geteuid() == 0 and shutil.which("useradd") else ["hostname"]


class Raw:
    """A JSON literal written as given: what Python's json module refuses to produce."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:20]!r}…)"


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # strings as ASCII escapes: lone surrogates travel as \\ud800


any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=24)
hostile_text = any_text | st.sampled_from(["azureuser\n", "\ud800", "\ufffe", "a\u0000b", "x" * 3000, "web-01\n",
                                           "root", "nobody", "\udfff" * 3, ""])
leaf = (st.none() | st.booleans() | st.integers() | st.floats() | hostile_text
        | st.sampled_from([Raw("9" * 5000), Raw("-" + "1" * 4400), Raw("1e999"), Raw("-1e999"), Raw("NaN"),
                           Raw("Infinity"), Raw("[" * 5000 + "]" * 5000)]))
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)
field = hostile_text | json_value
imds_document = st.fixed_dictionaries({"compute": st.fixed_dictionaries({
    "vmId": field, "name": field,
    "osProfile": st.fixed_dictionaries({"computerName": field, "adminUsername": field,
                                        "disablePasswordAuthentication": field | st.sampled_from(["true", "false"])}),
    "publicKeys": st.lists(st.fixed_dictionaries({"keyData": field, "path": field}), max_size=2) | json_value,
})}) | json_value
record_document = st.fixed_dictionaries({
    "schema": st.just(1) | json_value, "state": st.sampled_from(["network_wait", "configuring", "done", "failed"])
    | json_value, "vm_id": field, "boot_attempts": st.integers(-1, 5) | json_value,
    "history": st.lists(st.dictionaries(any_text, json_value, max_size=3), max_size=2) | json_value,
    "last_error": json_value, "recoverable_errors": json_value, "steps": json_value,
}) | json_value


@pytest.fixture(scope="module")
def shared_fabric() -> Iterator[FakeFabric]:
    with FakeFabric() as fake:
        yield fake


@contextlib.contextmanager
def a_vm(fabric: FakeFabric) -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="azprov-hostile-"))
    saved = os.environ.get("AZPROV_CONFIG_DIR")
    try:
        env = Env(tmp, fabric.url)
        env.set("fabric", imds_timeout=0.5, wireserver_timeout=2.0, network_timeout=2.0, request_timeout=1.0)
        env.set("configure", steps=STEPS)
        env.set("user", groups=[])
        etc = env.root / "etc"
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\n")
        (etc / "group").write_text("root:x:0:\n")
        (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
        (etc / "gshadow").write_text("root:*::\n")
        (env.root / "home").mkdir()
        os.environ["AZPROV_CONFIG_DIR"] = str(tmp / "system-config")
        yield env
    finally:
        if saved is None:
            os.environ.pop("AZPROV_CONFIG_DIR", None)
        else:
            os.environ["AZPROV_CONFIG_DIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def run(env: Env, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["--config", str(env.config_path), *args])
    return code, out.getvalue()


def check_run(env: Env, fabric: FakeFabric, asked_before: int) -> None:
    code, output = run(env)
    assert "Traceback" not in output and "unexpected internal error" not in output, output[-3000:]
    assert code in (0, 1), output[-3000:]
    saved = json.loads(env.state_file.read_text())
    assert saved["state"] == ("done" if code == 0 else "failed"), output[-2000:]
    provisioned = len(fabric.requests("health")) > asked_before
    if provisioned:
        posted = [e for e in fabric.requests("health")[asked_before:] if e["status"] == 200]
        assert posted, "the run provisioned but posted no report the fabric took"
        if code == 1:
            assert any(e.get("health_state") == "NotReady" for e in posted)
    status_code, status_out = run(env, "--status", "--json")
    shown = json.loads(status_out[status_out.index("{"):])
    assert shown["state"] == saved["state"]
    assert status_code == (1 if code == 1 else (2 if saved.get("recoverable_errors") else 0))


def imds_run(fabric: FakeFabric, doc: Any) -> None:
    fabric.set_script("imds", [{"status": 200, "body": dump(doc)}] * 40)
    with a_vm(fabric) as env:
        check_run(env, fabric, len(fabric.requests("health")))
    fabric.set_script("imds", [])


def record_run(fabric: FakeFabric, doc: Any) -> None:
    with a_vm(fabric) as env:
        env.state_dir.mkdir(mode=0o700)
        env.state_file.write_text(dump(doc), encoding="utf-8", errors="surrogatepass")
        os.chmod(env.state_file, 0o600)
        check_run(env, fabric, len(fabric.requests("health")))


@EXAMPLES
@given(doc=imds_document)
def test_any_imds_document_ends_done_or_failed(shared_fabric: FakeFabric, doc: Any) -> None:
    imds_run(shared_fabric, doc)


@EXAMPLES
@given(doc=record_document)
def test_any_state_record_ends_done_or_failed(shared_fabric: FakeFabric, doc: Any) -> None:
    record_run(shared_fabric, doc)


@pytest.mark.slow
@MANY
@given(doc=imds_document)
def test_many_imds_documents(shared_fabric: FakeFabric, doc: Any) -> None:
    imds_run(shared_fabric, doc)


@pytest.mark.slow
@MANY
@given(doc=record_document)
def test_many_state_records(shared_fabric: FakeFabric, doc: Any) -> None:
    record_run(shared_fabric, doc)


@pytest.mark.parametrize("value", ["\ud800", "\ufffe", "azureuser\n", Raw("9" * 5000), Raw("NaN"), Raw("1e999")])
def test_named_hostile_admin_usernames(shared_fabric: FakeFabric, value: Any) -> None:
    """The issue's own cases, always run: each ends with a saved record and a posted report."""
    doc = {"compute": {"vmId": "v", "osProfile": {"computerName": "web-01", "adminUsername": value,
                                                  "disablePasswordAuthentication": "true"}}}
    imds_run(shared_fabric, doc)
