"""The reliability matrix's hardening group: planted links and FIFOs, placeholder identities, refused names.

Each case runs the real CLI as a subprocess against the loopback fake (tests/scenarios.py). Quick
representatives and the bench harness's group and merge run in `make test`; every case is `slow`.
"""

from __future__ import annotations

import importlib.util
import os
import socketserver
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO
from scenarios import HARDENING, NAMES, PLACEHOLDER_UUIDS, PLANTS, Hardening, Plant, run_plant

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installing keys for the admin (uid 4321) needs root")

QUICK = {"planted: KVP pool file is a FIFO", "name: an existing account, uid 65000 > UID_MAX"}


def test_the_group_has_its_size() -> None:
    names = [case.name for case in HARDENING]
    assert len(names) == len(set(names)) == len(PLANTS) + len(PLACEHOLDER_UUIDS) + 1 + len(NAMES) == 14
    assert {name.split(":")[0] for name in names} == {"planted", "identity", "name"}
    assert QUICK <= set(names)


def _param(case: Hardening) -> pytest.param:  # type: ignore[valid-type]
    return pytest.param(case, id=case.name, marks=() if case.name in QUICK else (pytest.mark.slow,))


@pytest.mark.parametrize("case", [_param(c) for c in HARDENING])
def test_hardening_case(case: Hardening, tmp_path: Path) -> None:
    result = case.run(tmp_path)
    assert "Traceback" not in result.output, result.output
    assert result.detail["problems"] == [], (result.detail, result.output)
    if case.expect == "done":
        assert result.rc == 0 and result.state == "done" and result.ready == 1, result.output
    else:
        assert result.rc == 1 and result.state == "failed" and result.failure_reports >= 1, result.output
        assert (result.last_error or {}).get("reason"), "FAILED without a clear last_error"


def test_a_refusal_in_the_wrong_place_is_a_problem(tmp_path: Path) -> None:
    """The row's checks can fail: the sudoers refusal is the user step's, not the hostname step's, and the
    journal never says what is not there."""
    case = Plant("planted: misfiled", "root", "etc/sudoers.d", "abs_symlink", "words azprov never logs", "hostname")
    result = run_plant(case, tmp_path)
    assert result.state == "done" and result.ready == 1
    assert result.detail["problems"] == ["refusal not named in the journal",
                                         "refusal not in recoverable_errors for step hostname"]


# ---- the harness: bench/reliability.py --only hardening, merged into the table --------------------------

@pytest.fixture
def reliability(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The harness quiets the fake's server errors process-wide on import; give them back after the test.
    monkeypatch.setattr(socketserver.BaseServer, "handle_error", socketserver.BaseServer.handle_error)
    spec = importlib.util.spec_from_file_location("reliability", REPO / "bench" / "reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reliability", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


EARLIER = """## Reliability matrix

`bench/reliability.py --runs 1` (CPython 3.11.7, 2 CPUs, 2026-01-01 00:00 UTC), 92 s in all. Each run is the real \
`azprov` (…).

| scenario | expected | runs | DONE | FAILED-reported | duplicate Ready | lost Ready | max time (s) | as expected |
|---|---|---|---|---|---|---|---|---|
| crash at `x` (kill, _exit) + reboot | DONE | 2 | 2 | 0 | 0 | 0 | 0.34 | yes |
| record: empty (moved aside) | DONE | 1 | 1 | 0 | 0 | 0 | 0.20 | yes |

3 runs in 2 scenarios; lost Ready: 0; scenarios not as expected: none.
"""


def test_only_hardening_merges_its_rows_into_the_table(reliability: ModuleType, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = {case.name: case for case in HARDENING}
    monkeypatch.setattr(reliability.scenarios, "HARDENING", [by_name[name] for name in sorted(QUICK)])
    out = tmp_path / "RESULTS_reliability.md"
    out.write_text(EARLIER)
    assert reliability.main(["--only", "hardening", "--runs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| scenario")]
    assert [r.split(" | ")[0] for r in rows] == ["| crash at `x` (kill, _exit) + reboot",
                                                 "| record: empty (moved aside)", *(f"| {n}" for n in sorted(QUICK))]
    assert "| name: an existing account, uid 65000 > UID_MAX | FAILED, reported | 1 | 0 | 1 |" in text
    assert "| planted: KVP pool file is a FIFO | DONE | 1 | 1 | 0 | 0 | 0 |" in text
    assert text.rstrip().endswith("5 runs in 4 scenarios; lost Ready: 0; scenarios not as expected: none.")
    assert "92 s in all; then `bench/reliability.py --runs 1 --only hardening` (" in text
    assert text.count("Hardening rows") == 1


def test_a_merge_replaces_rows_in_place_and_supersedes_its_earlier_self(reliability: ModuleType) -> None:
    def row(name: str, ok: bool) -> object:
        r = reliability.Row(name, "DONE")
        r.add(reliability.Result(name, 0 if ok else 1, "done" if ok else "failed", 0.5, int(ok), 0, None, "",
                                 None), problem=None if ok else "outside tree changed")
        return r

    first, prov = reliability.merge(EARLIER, [row("record: empty (moved aside)", False), row("new one", True)],
                                    "`bench/reliability.py --runs 1 --only state` (X), 3 s")
    text = reliability.render(first, prov)
    names = [cells[0] for cells, _ in first]
    assert names == ["crash at `x` (kill, _exit) + reboot", "record: empty (moved aside)", "new one"]
    assert text.rstrip().endswith("4 runs in 3 scenarios; lost Ready: 1; scenarios not as expected: "
                                  "record: empty (moved aside) (outside tree changed).")
    again, prov = reliability.merge(text, [row("record: empty (moved aside)", True)],
                                    "`bench/reliability.py --runs 1 --only state` (Y), 2 s")
    assert [cells[-1] for cells, _ in again] == ["yes", "yes", "yes"]
    assert prov == ("`bench/reliability.py --runs 1` (CPython 3.11.7, 2 CPUs, 2026-01-01 00:00 UTC), 92 s in all; "
                    "then `bench/reliability.py --runs 1 --only state` (Y), 2 s, its rows merged in")
