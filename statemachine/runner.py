"""The runner drives a run: lock, load (quarantining a broken record), plan where to start, then the loop
step → trigger → persist until the run ends at DONE or FAILED.

It owns the one retry loop (`within_budget`, over `retry.until_deadline`): steps raise errors, and the loop
waits as the error's type says, within the phase's budget (`machine.PHASES`). It owns the failure path
(KVP, FAILED made durable, ProvisioningFailed posted through the same loop) and persistence after every
transition and every recorded retry. Steps are found by the module names in `machine.PHASES`, so
`statemachine` imports no `states` module until a run needs it; tests hand in their own.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, TypeVar

from statemachine import persistence, retry
from statemachine.context import Context, Outcome
from statemachine.errors import AgentError, BudgetExhausted, FabricError, StateFileError, Terminated
from statemachine.failpoints import failpoint
from statemachine.log import fields
from statemachine.machine import FAILURE_REPORT_BUDGET, PHASES, Agent, Phase, build_machine, ends_run, fire
from statemachine.persistence import Record, Store, load_or_set_aside, prepare_state_dir
from statemachine.resume import plan_start, read_vm_id, with_transition
from statemachine.text import clean, utc_now

log = logging.getLogger("azprov")

Step = Callable[[Context, Record], Outcome]
FailureReporter = Callable[[Context, Record, AgentError], bool]
T = TypeVar("T")

__all__ = ["Runner", "Store", "failing_steps", "run", "within_budget"]


def within_budget(ctx: Context, deadline: float, policy: retry.RetryPolicy, call: Callable[[], T],
                  on_retry: Callable[[AgentError, float], None] = lambda error, delay: None) -> T:
    """Every wait of azprov goes through here: `call` until it succeeds or `deadline` (monotonic) leaves no
    room. The deadline is what the clients shrink their per-call timeouts to."""
    ctx.run.deadline = deadline
    return retry.until_deadline(call, policy, deadline, ctx.clock, ctx.sleep, on_retry)


def error_entry(error: AgentError, phase: Phase) -> dict[str, Any]:
    return {**error.as_dict(), "state": phase.value, "at": utc_now()}


def _how_started(record: Record) -> str:
    """KVP's message for the first state of a run: "start", "retry_after_failure", or "resume"."""
    last = record.history[-1] if record.history else {}
    if last.get("state") == record.state.value and last.get("event") in ("start", "retry_after_failure"):
        return str(last["event"])
    return "resume"


class Runner:
    def __init__(self, ctx: Context, steps: Mapping[Phase, Step], store: Store,
                 report_failure: FailureReporter) -> None:
        self.ctx = ctx
        self.steps = steps
        self.store = store
        self.report_failure = report_failure
        self.record = Record()
        self.agent = Agent(max_boot_attempts=ctx.config.agent.max_boot_attempts)
        self.machine: Any = None
        self._event = "start"
        self._phase_started: dict[Phase, float] = {}
        self._source = Phase.NETWORK_WAIT  # the state the last trigger left
        self._entered_at = 0.0  # monotonic time the current state was entered (for KVP durations)
        self._left_told = False  # the host was already told that the state was left

    def _on_change(self) -> None:
        self.record = with_transition(self.record, self.agent.state, self._event, utc_now())
        self._save()
        log.info("state changed", extra=fields(state=self.agent.state.value, event=self._event))
        self._tell_host()

    def _save(self) -> None:
        """Every save of the run: a KVP pool given up on in this run joins the recoverable errors first
        (once), so `--status` and the record say what was refused, not only the journal."""
        problem = self.ctx.events().problem
        if problem is not None and not any(e.get("step") == "kvp" for e in self.record.recoverable_errors):
            self.record = self.record._replace(
                recoverable_errors=(*self.record.recoverable_errors, {"step": "kvp", **problem.as_dict()}))
        self.store.save(self.record)

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

    def _fire(self, event: str) -> bool:
        self._event = event
        self._source = self.agent.state
        self.agent.boot_attempts = self.record.boot_attempts
        return fire(self.machine, self.agent, event)

    def drive(self, record: Record) -> Record:
        """Run from `record` until DONE or FAILED; a FAILED record with boot attempts left starts over."""
        self.record = record
        self.agent.boot_attempts = record.boot_attempts
        self.machine = build_machine(self.agent, record.state, on_change=self._on_change)
        self._entered_at = self.ctx.clock()
        if record.state is Phase.FAILED:
            self._left_told = True  # a FAILED record was left by an earlier run
            self._fire("retry_after_failure")  # saves, and tells the host, from the hook; False: attempts used
        elif not ends_run(record.state):
            self._save()
            self.ctx.events().vm_id = record.vm_id
            self.ctx.events().entered(record.state.value, _how_started(record))
        try:
            while not ends_run(self.agent.state):
                self._turn(self.agent.state)
        except Terminated as t:
            if self.agent.state is not Phase.FAILED:  # FAILED (reporting it): keep the failure's own reason
                self.record = self.record._replace(last_error={
                    "reason": "terminated by a signal before provisioning finished",
                    "data": {"signal": t.signum}, "state": self.agent.state.value, "at": utc_now()})
            self._save()
            log.warning("terminated; the next run resumes here", extra=fields(state=self.agent.state.value))
            t.logged = True
            self.ctx.events().left(self.agent.state.value, "terminated", self.ctx.clock() - self._entered_at,
                                   f"signal {t.signum}")
            raise
        return self.record

    def _work(self, phase: Phase) -> Outcome:
        # The failpoints sit inside: an armed `raise` stands for a bug in the step itself.
        failpoint(f"{phase.value}.before_work")
        outcome = self.steps[phase](self.ctx, self.record)
        failpoint(f"{phase.value}.after_work")
        return outcome

    def _on_retry(self, phase: Phase, e: AgentError, delay: float) -> None:
        self.record = self.record._replace(attempts=self.record.attempts + 1)
        if not e.recorded:
            return
        self.record = self.record._replace(last_error=error_entry(e, phase), updated_at=utc_now())
        log.warning("step failed; retrying", extra=fields(state=phase.value, reason=str(e),
                                                           attempt=self.record.attempts, delay_s=round(delay, 3)))
        self._save()

    def _turn(self, phase: Phase) -> None:
        spec = PHASES[phase]
        budget = float(getattr(self.ctx.config.fabric, spec.budget_key))
        deadline = self._phase_started.setdefault(phase, self.ctx.clock()) + budget
        try:
            outcome = within_budget(self.ctx, deadline, spec.policy, lambda: self._work(phase),
                                    lambda e, delay: self._on_retry(phase, e, delay))
        except AgentError as e:
            if e.retryable:  # the budget ran out
                e = BudgetExhausted(spec.exhausted, budget_s=budget, budget_key=f"fabric.{spec.budget_key}",
                                    attempts=self.record.attempts + 1, last_reason=e.reason,
                                    **{f"last_{k}": v for k, v in e.supporting_data.items()})
            self._fail(phase, e)
            return
        except Exception as e:  # a bug: fail loudly, but still tell the platform
            log.exception("unexpected error in a step")
            self._fail(phase, AgentError("unexpected internal error", error=type(e).__name__,
                                         detail=clean(str(e), 200)))
            return
        self.record = self.record._replace(**outcome.updates)
        if outcome.event is None:  # progress inside the phase (one configure step done)
            self.record = self.record._replace(attempts=0, updated_at=utc_now())
            self._save()
            return
        self._fire(outcome.event)

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
        from statemachine.health import failure_report

        events.report(failure_report(e.reason, e.supporting_data, self.record.vm_id, entry["at"]))
        # FAILED is made durable before the platform hears of it: if we die after the NotReady is taken,
        # the next boot must see FAILED (and start over, posting Ready again), not resume the phase and
        # end DONE while the platform's last word for this VM is ProvisioningFailed.
        self._fire("fail")
        failpoint("fail.before_report")
        if phase is not Phase.NETWORK_WAIT and self._report(e):  # unreachable fabric: nobody to tell
            failpoint("fail.after_report")
            self.record = self.record._replace(failure_reported_at=utc_now(), updated_at=utc_now())
            self._save()

    def _report(self, e: AgentError) -> bool:
        """Keep trying to tell the platform for the report's own budget (the WireServer may be between two
        503s): the sooner it knows, the sooner the deployment fails instead of timing out."""
        ctx = self.ctx
        budget = min(FAILURE_REPORT_BUDGET, ctx.config.fabric.wireserver_timeout)

        def attempt() -> None:
            if not self.report_failure(ctx, self.record, e):
                raise FabricError("the failure report was not accepted", retryable=True)

        try:
            within_budget(ctx, ctx.clock() + budget, retry.WIRESERVER, attempt)
        except AgentError as not_taken:
            log.warning("giving up reporting the failure", extra=fields(budget_s=budget, reason=not_taken.reason))
            return False
        return True


# ---- one run, from the lock to the end ---------------------------------------------------------------------

def default_steps() -> dict[Phase, Step]:
    return {phase: importlib.import_module(spec.step).step for phase, spec in PHASES.items()}


def failing_steps(error: AgentError) -> dict[Phase, Step]:
    """The steps of a run that can only fail with `error` (a broken config): wait for the network as
    usual, so that there is a fabric to tell, then fail in whatever phase the record stands."""
    def fail(ctx: Context, record: Record) -> Outcome:
        raise error

    wait = importlib.import_module(PHASES[Phase.NETWORK_WAIT].step).step
    return {phase: wait if phase is Phase.NETWORK_WAIT else fail for phase in PHASES}


def run(ctx: Context, steps: Mapping[Phase, Step] | None = None,
        report_failure: FailureReporter | None = None) -> Phase:
    """One run under the lock: DONE or FAILED. Raises `LockError` (another run holds the lock past the
    whole budget) and `Terminated` (SIGTERM/SIGINT); everything else ends in a phase."""
    from statemachine.lock import RunLock

    cfg = ctx.config
    state_file = cfg.state_dir / persistence.STATE_FILE
    lock = RunLock(state_file.parent / persistence.LOCK_FILE)
    try:
        durable = prepare_state_dir(state_file.parent)
        if durable:
            lock.acquire(timeout=cfg.total_budget(), on_wait=lambda pid: log.info(
                "another run holds the lock; waiting", extra=fields(pid=pid)))
        return _run_locked(ctx, state_file, durable, steps, report_failure)
    finally:
        lock.release()


def _run_locked(ctx: Context, state_file: Path, durable: bool, steps: Mapping[Phase, Step] | None,
                report_failure: FailureReporter | None) -> Phase:
    cfg = ctx.config
    vm_id = read_vm_id(Path(cfg.identity.product_uuid_path), Path(cfg.identity.efi_path))
    action, record = plan_start(load_or_set_aside(state_file) if durable else None, vm_id, cfg.agent.max_boot_attempts,
                                utc_now())
    if action == "done":
        log.info("already provisioned on this VM; nothing to do", extra=fields(vm_id=record.vm_id))
        return Phase.DONE
    if action == "give_up":
        log.error("provisioning failed on every attempt; not trying again",
                  extra=fields(boot_attempts=record.boot_attempts, last_error=(record.last_error or {}).get("reason")))
        return Phase.FAILED
    _announce(ctx, state_file, action, record, vm_id)
    from states import network_wait  # the runner's first need: start requests and lxml loading now

    network_wait.warm_imports()  # they load while the first save waits on the disk
    if report_failure is None:
        from states import reporting

        report_failure = reporting.report_failure
    final = Runner(ctx, steps or default_steps(), Store(state_file, enabled=durable), report_failure).drive(record)
    if final.state is Phase.DONE:
        log.info("provisioning finished", extra=fields(state="done", recoverable_errors=len(final.recoverable_errors)))
    else:
        log.error("provisioning failed", extra=fields(state="failed", reason=(final.last_error or {}).get("reason")))
    return final.state


def _announce(ctx: Context, state_file: Path, action: str, record: Record, vm_id: str | None) -> None:
    """Keep a previous VM's record aside, and log the `starting` line boot timings are read from."""
    if action == "new_vm":
        try:
            persistence.set_aside(state_file, "prev")
        except StateFileError as e:  # the old record is overwritten by the first save, if that works
            log.error("previous VM's record cannot be kept aside", extra=fields(reason=str(e)))
        log.info("record belongs to another VM (a new VM from this image); provisioning afresh",
                 extra=fields(vm_id=vm_id))
    if vm_id is None:
        log.warning("no SMBIOS product_uuid; the VM id will come from IMDS compute.vmId",
                    extra=fields(path=ctx.config.identity.product_uuid_path))
    starts_at = Phase.NETWORK_WAIT if action == "retry_failed" else record.state
    log.info("starting", extra=fields(action=action, state=starts_at.value, vm_id=vm_id))
