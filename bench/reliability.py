"""The reliability matrix as a table anyone can rerun: `.venv/bin/python bench/reliability.py [--runs N]`.

Runs every scenario of tests/scenarios.py (crash points × SIGKILL/os._exit, SIGTERM in each state, every
fabric fault, hostile documents, broken state records, unusable state directories, two runs at once, and the
hardening group: links and FIFOs planted under the root and at the state dir, placeholder SMBIOS UUIDs, a
record without a VM id, refused admin names) N times against the loopback fake fabric, and writes the
"Reliability matrix" table to bench/RESULTS_reliability.md (scenario × runs, DONE, FAILED-reported,
duplicate Ready, lost Ready, max time). Nothing leaves 127.0.0.1; every run uses a temporary root and state
directory. `--only GROUP` runs some groups and merges their rows into the existing table (`--replace`: write
only them); bench/run.py --render then copies the table into bench/RESULTS.md.

Columns: DONE = runs whose final state was DONE; FAILED-reported = runs that ended FAILED with a
NotReady/ProvisioningFailed report accepted by the fabric; duplicate Ready = runs where the fabric accepted
more than one Ready for its current incarnation (expected only in the crash window between the 200 and the
save, and on the failure-path rows, where a reboot after ProvisioningFailed must post Ready again); lost
Ready = runs that should have reported Ready (the fabric was or became healthy) and did not (failure-path
rows: Ready is not the platform's last word); max time = the longest run in seconds (crash rows: both
boots; SIGTERM rows: signal to exit).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import socketserver
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import scenarios  # noqa: E402
from scenarios import Result  # noqa: E402

# The agent hangs up on the fake mid-answer on purpose (deadlines, size caps): the fake's server thread
# then prints a BrokenPipe traceback per case. That is the fake's noise, not the agent's, so keep it quiet.
socketserver.BaseServer.handle_error = lambda self, request, client_address: None  # type: ignore[method-assign]

OUT = REPO / "bench" / "RESULTS_reliability.md"


@dataclasses.dataclass
class Row:
    scenario: str
    expected: str  # "DONE", "FAILED, reported", "FAILED"
    results: list[Result] = dataclasses.field(default_factory=list)
    times: list[float] = dataclasses.field(default_factory=list)
    duplicates_allowed: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)  # checks a run failed beyond its outcome

    def add(self, result: Result, seconds: float | None = None, problem: str | None = None) -> None:
        """One run: its result, the time shown in the table (default: the whole run), and what else was
        wrong with it, if anything (too slow, SIGTERM not honoured, a broken record left in place)."""
        self.results.append(result)
        self.times.append(result.elapsed if seconds is None else seconds)
        if problem is not None:
            self.problems.append(problem)

    def cells(self) -> list[str]:
        runs = len(self.results)
        done = sum(r.state == "done" for r in self.results)
        failed_reported = sum(r.state == "failed" and r.failure_reports > 0 for r in self.results)
        dup = sum(r.duplicate for r in self.results)
        lost = sum(r.ready == 0 for r in self.results) if self.expected == "DONE" else 0
        ok = not self.problems and all(self._ok(r) for r in self.results)
        return [self.scenario, self.expected, str(runs), str(done), str(failed_reported),
                f"{dup}" + (" (allowed)" if dup and self.duplicates_allowed else ""), str(lost),
                f"{max(self.times):.2f}", "yes" if ok else "**NO**"]

    def _ok(self, r: Result) -> bool:
        if "Traceback" in r.output:
            return False
        if self.expected == "DONE":
            return r.state == "done" and r.ready >= 1 and (r.ready == 1 or r.duplicate_allowed
                                                            or self.duplicates_allowed)
        if self.expected == "FAILED, reported":
            return r.state == "failed" and r.failure_reports >= 1 and bool(r.last_error)
        return r.state == "failed" and bool(r.last_error)


def _runs(n: int, fn: Callable[[Path], Result]) -> Iterator[Result]:
    for _ in range(n):
        tmp = Path(tempfile.mkdtemp(prefix="azprov-rel-"))
        try:
            yield fn(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def crash_rows(n: int) -> Iterator[Row]:
    by_point: dict[str, list[scenarios.Crash]] = {}
    for crash in scenarios.crash_matrix():
        by_point.setdefault(crash.point, []).append(crash)
    for point, crashes in by_point.items():
        saves = f", saves 1-{scenarios.SAVES_IN_A_RUN}" if point.startswith("persist.") else ""
        row = Row(f"crash at `{point}` (kill, _exit{saves}) + reboot", "DONE")
        for crash in crashes:
            for result in _runs(n, lambda tmp, c=crash: scenarios.run_crash(c, tmp)):
                # a second Ready is allowed only if the crash fell between the 200 and the save
                result.duplicate_allowed = result.duplicate_allowed and result.ready <= 2
                row.add(result)
        row.duplicates_allowed = any(r.duplicate for r in row.results) and all(
            r.duplicate_allowed for r in row.results if r.duplicate)
        yield row


def fail_crash_rows(n: int) -> Iterator[Row]:
    for point in scenarios.FAIL_POINTS:
        row = Row(f"crash at `{point}` (kill, _exit; IMDS past budget, then heals) + reboot", "DONE",
                  duplicates_allowed=True)
        for action in scenarios.CRASH_ACTIONS:
            for result in _runs(n, lambda tmp, a=action, p=point: scenarios.run_fail_crash(p, a, tmp)):
                row.add(result)
        yield row


def sigterm_rows(n: int) -> Iterator[Row]:
    for phase in scenarios.ACTIVE_PHASES:
        row = Row(f"SIGTERM in {phase} (exit ≤ 2 s) + reboot", "DONE")
        for result in _runs(n, lambda tmp, p=phase: scenarios.run_sigterm(p, tmp)):
            d = result.detail
            late = d["term_rc"] != 143 or d["term_seconds"] >= 2.0
            row.add(result, d["term_seconds"], "SIGTERM not handled in time" if late else None)
        yield row


def fault_rows(n: int, include_slow: bool) -> Iterator[Row]:
    for fault in scenarios.FAULTS:
        if fault.slow and not include_slow:
            continue
        expected = "DONE" if fault.expect == "done" else ("FAILED, reported" if fault.reported else "FAILED")
        row = Row(fault.name, expected, duplicates_allowed=fault.duplicate_ok)
        for result in _runs(n, lambda tmp, f=fault: scenarios.run_fault(f, tmp)):
            slow = result.elapsed >= fault.max_time
            row.add(result, problem=f"over its time bound {fault.max_time}" if slow else None)
        yield row


def state_rows(n: int) -> Iterator[Row]:
    for case in scenarios.RECORD_CASES:
        row = Row(f"{case} (moved aside)", "DONE")
        for result in _runs(n, lambda tmp, c=case: scenarios.run_record(c, tmp)):
            kept = result.detail.get("moved_aside") != 1
            row.add(result, problem="broken record not moved aside" if kept else None)
        yield row
    can_unshare = shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0
    if can_unshare:
        for case in scenarios.MOUNT_CASES:
            row = Row(f"{case} (unshare -m, 16 KiB tmpfs)", "DONE")
            for result in _runs(n, lambda tmp, c=case: scenarios.run_mount_case(c, tmp)):
                row.add(result)
            yield row
    row = Row("two runs at once (one provisions, one waits)", "DONE")
    for result in _runs(n, scenarios.run_concurrent):
        row.add(result)
    yield row


def hardening_rows(n: int) -> Iterator[Row]:
    for case in scenarios.HARDENING:
        expected = "DONE" if case.expect == "done" else ("FAILED, reported" if case.reported else "FAILED")
        row = Row(case.name, expected)
        for result in _runs(n, case.run):
            problems = result.detail.get("problems") or []
            row.add(result, problem="; ".join(problems) if problems else None)
        yield row


HEADER = ["scenario", "expected", "runs", "DONE", "FAILED-reported", "duplicate Ready", "lost Ready",
          "max time (s)", "as expected"]
GROUPS = ("crash", "sigterm", "fault", "state", "hardening")
# What every run shares; the sentence before it says how (and when) the table was made. A merge finds the
# one by the other, so this must keep beginning with these words.
HOW = "Each run is the real `azprov`"
INTRO = (HOW + " (the console script's entry, `python -m statemachine.launch`) as a subprocess against the "
         "loopback fake fabric with small budgets (network/wireserver/imds 3 s, per call 1 s; 1.5 s where a "
         "budget is meant to run out). Crash rows: a first boot dies at the failpoint "
         "(`AZPROV_FAILPOINT=point:kill|exit@N`), a second boot finishes; max time covers both. "
         "SIGTERM rows: max time is signal → exit. Hardening rows (planted, identity, name): all three configure "
         "steps over a temporary root; as expected also means no run past "
         f"{scenarios.HANG_BOUND:.0f} s, a planted link's outside tree unchanged byte for byte (SHA-256 of "
         "names, types, modes, owners and contents), no outside secret copied in, the refusal named in the "
         "journal and in `recoverable_errors` (a configure step's or KVP's), or for the state dir in "
         "`--status --json`; a placeholder UUID's VM id from IMDS "
         "`vmId` (`--status --json` `vm_id_source`) and no fabric request on the second boot (max time covers both "
         "boots); a refused name in the ProvisioningFailed description.")

Cells = list[str]


def _note(row: Row) -> str:
    return "; ".join(sorted(set(row.problems)))


def made_by(groups: list[str], n: int, seconds: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    python = f"{platform.python_implementation()} {platform.python_version()}"
    only = "".join(f" --only {g}" for g in groups) if set(groups) != set(GROUPS) else ""
    return f"`bench/reliability.py --runs {n}{only}` ({python}, {os.cpu_count()} CPUs, {when}), {seconds:.0f} s"


def render(table: list[tuple[Cells, str]], provenance: str) -> str:
    """The section: how it was made, the table, and the totals line. `table`: each row's cells and what
    else was wrong with it (shown in the totals line when the row is not as expected)."""
    lines = ["## Reliability matrix", "", f"{provenance}. {INTRO}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells, _ in table]
    total = sum(int(cells[2]) for cells, _ in table)
    lost = sum(int(cells[6]) for cells, _ in table)
    bad = [cells[0] + (f" ({note})" if note else "") for cells, note in table if cells[-1] != "yes"]
    lines += ["", f"{total} runs in {len(table)} scenarios; lost Ready: {lost}; "
              f"scenarios not as expected: {', '.join(bad) if bad else 'none'}."]
    return "\n".join(lines) + "\n"


def parse(text: str) -> tuple[str, list[Cells]]:
    """A rendered section back: its provenance sentence and its rows' cells."""
    provenance, rows = "", []
    for line in text.splitlines():
        if f". {HOW}" in line:
            provenance = line.split(f". {HOW}", 1)[0]
        elif line.startswith("| ") and not line.startswith(f"| {HEADER[0]} |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) != len(HEADER):
                raise ValueError(f"not a row of the matrix: {line!r}")
            rows.append(cells)
    return provenance, rows


def merge(text: str, rows: list[Row], this_run: str) -> tuple[list[tuple[Cells, str]], str]:
    """This run's rows into an earlier table: a row replaces the one of the same scenario in place; a new
    scenario goes after the last replaced row (at the end when none was). The rest is kept as it was, and
    the provenance says which rows are newer (an earlier merge of the same groups is superseded)."""
    earlier, old_rows = parse(text)
    fresh = {r.scenario: (r.cells(), _note(r)) for r in rows}
    table: list[tuple[Cells, str]] = []
    anchor = None
    for cells in old_rows:
        if cells[0] in fresh:
            table.append(fresh.pop(cells[0]))
            anchor = len(table)
        else:
            table.append((cells, ""))
    at = len(table) if anchor is None else anchor
    table[at:at] = [fresh[r.scenario] for r in rows if r.scenario in fresh]
    command = this_run.split(" (", 1)[0]
    clauses = [c for c in earlier.split("; then ") if c and not c.startswith(command + " (")]
    return table, "; then ".join([*clauses, f"{this_run}, its rows merged in"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2, help="runs per scenario (crash rows: per point and action)")
    p.add_argument("--skip-slow", action="store_true", help="leave out the 50 MB bodies")
    p.add_argument("--only", choices=GROUPS, action="append",
                   help="run only these groups (repeatable); their rows are merged into --out, the others kept")
    p.add_argument("--replace", action="store_true", help="with --only: write only this run's rows to --out")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    groups = args.only or list(GROUPS)
    started = time.monotonic()
    rows: list[Row] = []
    makers = {"crash": lambda: [*crash_rows(args.runs), *fail_crash_rows(args.runs)],
              "sigterm": lambda: sigterm_rows(args.runs),
              "fault": lambda: fault_rows(args.runs, not args.skip_slow), "state": lambda: state_rows(args.runs),
              "hardening": lambda: hardening_rows(args.runs)}
    for group in groups:
        for row in makers[group]():
            rows.append(row)
            cells = row.cells()
            print(f"{cells[-1]:>6}  {cells[0]}  runs={cells[2]} done={cells[3]} failed_reported={cells[4]} "
                  f"dup={cells[5]} lost={cells[6]} max={cells[7]}s" + (f"  ({_note(row)})" if row.problems else ""),
                  flush=True)
    this_run = made_by(groups, args.runs, time.monotonic() - started)
    if set(groups) != set(GROUPS) and not args.replace and args.out.exists():
        table, provenance = merge(args.out.read_text(), rows, this_run)
    else:
        table, provenance = [(r.cells(), _note(r)) for r in rows], f"{this_run} in all"
    args.out.write_text(render(table, provenance))
    print(f"wrote {args.out}")
    return 0 if all(r.cells()[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
