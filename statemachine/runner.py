"""The runner: decide where to start, then loop step → trigger → persist until a terminal phase.

It owns the one retry policy (steps raise retryable errors, the runner waits and calls again until the
phase's budget is spent), the failure path (report ProvisioningFailed, then `fail`), and persistence after
every transition and every retry. It receives the steps table and the failure reporter as arguments, so
`statemachine` never imports `states`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from statemachine import persistence, retry
from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, BudgetExhausted, FabricError, StateFileError, Terminated
from statemachine.failpoints import failpoint
from statemachine.health import failure_report
from statemachine.log import fields
from statemachine.machine import TERMINAL, Agent, Phase, build_machine
from statemachine.persistence import Record
from statemachine.resume import with_transition
from statemachine.text import clean
from statemachine.timeutil import utc_now

log = logging.getLogger("azprov")

Step = Callable[[Context, Record], Outcome]
FailureReporter = Callable[[Context, Record, AgentError], bool]

BUDGET_KEY = {
    Phase.NETWORK_WAIT: "network_timeout",
    Phase.GOALSTATE: "wireserver_timeout",
    Phase.REPORTING: "wireserver_timeout",
    Phase.CONFIGURING: "imds_timeout",
}
POLICY = {
    Phase.NETWORK_WAIT: retry.WIRESERVER,
    Phase.GOALSTATE: retry.WIRESERVER,
    Phase.REPORTING: retry.WIRESERVER,
    Phase.CONFIGURING: retry.IMDS,
}
# Why a phase gave up, naming the service and the budget: the operator reads this in the portal.
EXHAUSTED = {
    Phase.NETWORK_WAIT: "WireServer did not accept a connection within fabric.network_timeout",
    Phase.GOALSTATE: "WireServer gave no usable goal state within fabric.wireserver_timeout",
    Phase.REPORTING: "WireServer did not accept the health report within fabric.wireserver_timeout",
    Phase.CONFIGURING: "IMDS gave no usable instance metadata within fabric.imds_timeout",
}
FAILURE_REPORT_BUDGET = 30.0  # at most; never more than fabric.wireserver_timeout


def error_entry(error: AgentError, phase: Phase) -> dict[str, Any]:
    return {**error.as_dict(), "state": phase.value, "at": utc_now()}


# ---- persistence that degrades instead of losing the Ready ---------------------------------------------

class Store:
    """Saves the record; when the disk refuses (read-only, full), carries on in memory and says so once:
    reporting Ready matters more than remembering that we did."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False: the state directory is unusable, keep everything in memory
        self.failed: StateFileError | None = None

    def save(self, record: Record) -> None:
        if not self.enabled:
            return
        try:
            persistence.save(self.path, record)
        except StateFileError as e:
            if self.failed is None:
                log.error("state record cannot be saved; continuing without persistence",
                          extra=fields(reason=str(e)))
            self.failed = e
        except Exception as e:  # a bug in saving must not cost the Ready either: loud, once, then in memory
            if self.failed is None:
                log.exception("saving the state record failed unexpectedly; continuing without persistence")
            self.failed = StateFileError("state record cannot be saved", path=str(self.path),
                                         error=type(e).__name__)


def _how_started(record: Record) -> str:
    """KVP's message for the first state of a run: "start", "retry_after_failure", or "resume"."""
    last = record.history[-1] if record.history else {}
    if last.get("state") == record.state.value and last.get("event") in ("start", "retry_after_failure"):
        return str(last["event"])
    return "resume"


# ---- the loop ----------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, ctx: Context, steps: Mapping[Phase, Step], store: Store,
                 report_failure: FailureReporter) -> None:
        self.ctx = ctx
        self.steps = steps
        self.store = store
        self.report_failure = report_failure
        self.record = Record()
        self.agent = Agent()
        self._event = "start"
        self._phase_started: dict[Phase, float] = {}
        self._source = Phase.NETWORK_WAIT  # the state the last trigger left
        self._entered_at = 0.0  # monotonic time the current state was entered (for KVP durations)
        self._left_told = False  # the failure path already told KVP that the state was left

    def _on_change(self) -> None:
        self.record = with_transition(self.record, self.agent.state, self._event, utc_now())
        self.store.save(self.record)
        log.info("state changed", extra=fields(state=self.agent.state.value, event=self._event))
        self._tell_host()

    def _tell_host(self) -> None:
        """KVP: the state just left and the one entered, one event each (the host's view of the run)."""
        events = self.ctx.events()
        events.vm_id = self.record.vm_id
        now = self.ctx.clock()
        if not self._left_told:
            events.left(self._source.value, "success", now - self._entered_at, self._event)
        failed = self.agent.state is Phase.FAILED
        events.entered(self.agent.state.value,
                       str((self.record.last_error or {}).get("reason", "")) if failed else self._event)
        self._entered_at, self._left_told = now, False

    def _fire(self, event: str) -> None:
        self._event = event
        self._source = self.agent.state
        self.agent.trigger(event)

    def drive(self, record: Record) -> Record:
        self.record = record
        build_machine(self.agent, record.state, on_change=self._on_change)
        self._entered_at = self.ctx.clock()
        if record.state not in TERMINAL:
            self.ctx.events().vm_id = record.vm_id
            self.ctx.events().entered(record.state.value, _how_started(record))
        try:
            while self.agent.state not in TERMINAL:
                self._turn(self.agent.state)
        except Terminated as t:
            if self.agent.state is not Phase.FAILED:  # FAILED (reporting it): keep the failure's own reason
                self.record = self.record._replace(last_error={
                    "reason": "terminated by a signal before provisioning finished",
                    "data": {"signal": t.signum}, "state": self.agent.state.value, "at": utc_now()})
            self.store.save(self.record)
            log.warning("terminated; the next run resumes here", extra=fields(state=self.agent.state.value))
            t.logged = True
            self.ctx.events().left(self.agent.state.value, "terminated", self.ctx.clock() - self._entered_at,
                                   f"signal {t.signum}")
            raise
        return self.record

    def _turn(self, phase: Phase) -> None:
        ctx = self.ctx
        started = self._phase_started.setdefault(phase, ctx.clock())
        budget = float(getattr(ctx.config.fabric, BUDGET_KEY[phase]))
        ctx.deadline = started + budget
        try:  # the failpoints sit inside: an armed `raise` stands for a bug in the step itself
            failpoint(f"{phase.value}.before_work")
            outcome = self.steps[phase](ctx, self.record)
            failpoint(f"{phase.value}.after_work")
        except AgentError as e:
            self._after_error(phase, e, budget)
            return
        except Exception as e:  # a bug: fail loudly, but still tell the platform
            log.exception("unexpected error in a step")
            self._fail(phase, AgentError("unexpected internal error", error=type(e).__name__,
                                         detail=clean(str(e), 200)))
            return
        self.record = self.record._replace(**outcome.updates)
        if outcome.event is None:  # progress inside the phase (one configure step done)
            self.record = self.record._replace(attempts=0, updated_at=utc_now())
            self.store.save(self.record)
            return
        self._fire(outcome.event)

    def _after_error(self, phase: Phase, e: AgentError, budget: float) -> None:
        ctx = self.ctx
        attempts = self.record.attempts + 1
        self.record = self.record._replace(attempts=attempts, last_error=error_entry(e, phase),
                                           updated_at=utc_now())
        delay = retry.wait_before_retry(POLICY[phase], attempts, getattr(e, "retry_after", None),
                                        ctx.deadline - ctx.clock())
        if e.retryable and delay is not None:
            log.warning("step failed; retrying", extra=fields(state=phase.value, reason=str(e),
                                                               attempt=attempts, delay_s=round(delay, 3)))
            self.store.save(self.record)
            ctx.sleep(delay)
            return
        if e.retryable:
            e = BudgetExhausted(EXHAUSTED[phase],
                                budget_s=budget, budget_key=f"fabric.{BUDGET_KEY[phase]}",
                                attempts=attempts, last_reason=e.reason,
                                **{f"last_{k}": v for k, v in e.supporting_data.items()})
        self._fail(phase, e)

    def _fail(self, phase: Phase, e: AgentError) -> None:
        log.error("provisioning failed", extra=fields(state=phase.value, reason=str(e)))
        entry = error_entry(e, phase)
        self.record = self.record._replace(last_error=entry)
        # KVP before any POST: the host harvests the pool when the report arrives. Written even when
        # the fabric is unreachable (NETWORK_WAIT): KVP needs no network.
        events = self.ctx.events()
        events.vm_id = self.record.vm_id
        # The reason only: the report right after carries the supporting data.
        events.left(phase.value, "error", self.ctx.clock() - self._entered_at, e.reason)
        self._left_told = True
        events.report(failure_report(e.reason, e.supporting_data, self.record.vm_id, entry["at"]))
        # FAILED is made durable before the platform hears of it: if we die after the NotReady is taken,
        # the next boot must see FAILED (and start over, posting Ready again), not resume the phase and
        # end DONE while the platform's last word for this VM is ProvisioningFailed.
        self._fire("fail")
        failpoint("fail.before_report")
        if phase is not Phase.NETWORK_WAIT and self._report(e):  # unreachable fabric: nobody to tell
            failpoint("fail.after_report")
            self.record = self.record._replace(failure_reported_at=utc_now(), updated_at=utc_now())
            self.store.save(self.record)

    def _report(self, e: AgentError) -> bool:
        """Keep trying to tell the platform for the report's own budget (the WireServer may be between two
        503s): the sooner it knows, the sooner the deployment fails instead of timing out."""
        ctx = self.ctx
        budget = min(FAILURE_REPORT_BUDGET, ctx.config.fabric.wireserver_timeout)
        ctx.deadline = ctx.clock() + budget

        def attempt() -> None:
            if not self.report_failure(ctx, self.record, e):
                raise FabricError("the failure report was not accepted", retryable=True)

        try:
            retry.until_deadline(attempt, retry.WIRESERVER, ctx.deadline, ctx.clock, ctx.sleep)
        except AgentError:
            log.warning("giving up reporting the failure", extra=fields(budget_s=budget))
            return False
        return True
