"""`azprov`: the composition root. Parses arguments, loads config, wires the steps to the runner, and is
the only place where errors become exit codes.

Exit codes of a run: 0 DONE, 1 FAILED, 78 configuration error, 75 lock not obtained, 64 usage error,
143/130 terminated by SIGTERM/SIGINT. `--status`: 0 ok, 1 failed, 2 done with recoverable errors,
3 interrupted, 77 permission denied, 124 `--wait --timeout` expired (statemachine/status.py). `--dry-run`:
0 every step can plan, 2 only recoverable problems, 1 a step would fail (or the fabric cannot be read).
`clean`: 0 cleaned, 75 a run holds the lock. The DONE fast path (a provisioned VM's later boots) reads the
record and exits without importing transitions, requests or lxml.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from statemachine import config, fastpath, persistence
from statemachine import log as logsetup
from statemachine.errors import AgentError, ConfigError, StateFileError, Terminated
from statemachine.log import fields

if TYPE_CHECKING:  # argparse stays unimported on the unit's own command line
    import argparse

log = logging.getLogger("azprov")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plain, value = fastpath.config_argument(argv)
    explicit = Path(value) if value is not None else None
    if plain:  # the unit's own command line: no argparse (~3 ms of every first boot)
        args = None
    else:
        from statemachine import arguments

        args = arguments.parse(argv)
        explicit = args.config
    try:
        layers = config.read_layers(explicit)
        cfg = config.load_texts(layers)
    except ConfigError as e:
        print(f"azprov: {e}", file=sys.stderr)
        if args is not None and args.status:  # status still finds the record, with what is valid
            cfg, problems = config.load_valid(explicit)
            return status(cfg, args, problems[0] if problems else e)
        return e.exit_code
    logsetup.setup(cfg.log.level)
    state_file = cfg.state_dir / persistence.STATE_FILE
    if args is not None and args.status:
        return status(cfg, args)
    if args is not None and args.dry_run:
        return dry_run(cfg, args.json)
    if args is not None and args.command == "clean":
        return clean(cfg, args.logs, args.machine_id)
    if args is not None and args.command == "kvp":
        return kvp(cfg, args.json)
    code = run(cfg, state_file)
    if code == 0 and plain:  # only the unit's own command line can take the fast path on the next boot
        remember_done(cfg, layers, value, state_file)
    return code


def remember_done(cfg: config.Config, layers: list[tuple[Path, str]], given: str | None, state_file: Path) -> None:
    """Stamp a DONE record for the next boot's fast path (statemachine/fastpath.py), with the config texts
    this run validated (not a second read, which could see an edit made during the run). The `--config`
    layer is named as `given` on the command line, as the fast path will name it (Path() would normalise
    `dir//x` or `./x` into a string the next boot never compares equal)."""
    from statemachine.phase import Phase

    try:
        record = persistence.load(state_file)
    except StateFileError:
        return
    if record is None or record.state is not Phase.DONE or record.vm_id is None:
        return
    names = [str(path) for path, _ in layers]
    if given is not None:
        names[-1] = given
    fastpath.remember([[name, text] for name, (_, text) in zip(names, layers)], str(state_file.parent),
                      cfg.identity.product_uuid_path, cfg.identity.efi_path,
                      record.vm_id, cfg.log.level)


def dry_run(cfg: config.Config, as_json: bool) -> int:
    """Plan only. Logs go to stderr so stdout holds nothing but the plan."""
    from statemachine.context import Context
    from states import dryrun

    for name in ("azprov", "statemachine", "states"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)
    try:
        result = dryrun.plan(Context(cfg))
    except AgentError as e:
        if as_json:
            print(json.dumps({"dry_run": True, "error": e.as_dict()}, indent=2))
        else:
            print(f"azprov: dry run failed: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else dryrun.render(result))
    return dryrun.exit_code(result)


def clean(cfg: config.Config, logs: bool, machine_id: bool) -> int:
    from statemachine import clean as cleaning

    try:
        removed = cleaning.clean(cfg, logs=logs, machine_id=machine_id)
    except AgentError as e:
        print(f"azprov: clean: {e}", file=sys.stderr)
        return e.exit_code
    for path in removed:
        print(path if path.startswith("created ") else f"removed {path}")
    if not removed:
        print("nothing to remove")
    return 0


def kvp_pool(cfg: config.Config) -> Path:
    """The pool file, under paths.root as the run writes it."""
    return Path(cfg.paths.root) / cfg.kvp.pool_path.lstrip("/")


def kvp(cfg: config.Config, as_json: bool) -> int:
    """`azprov kvp`: the Hyper-V KVP pool decoded, split values rejoined. Exit 1 when it cannot be read."""
    from statemachine import kvp as pool_format
    from statemachine import status as st

    pool = kvp_pool(cfg)
    if as_json:
        data = st.kvp_json(pool)
        print(json.dumps(data, indent=2, sort_keys=True))
        return 1 if "error" in data else 0
    print(pool_format.format_pool(pool))
    return 0 if pool.is_file() else 1


def status(cfg: config.Config, args: argparse.Namespace, config_error: ConfigError | None = None) -> int:
    from statemachine import status as st

    return st.command(cfg.state_dir / persistence.STATE_FILE, Path(cfg.paths.root), as_json_output=args.json,
                      long=args.long, wait_for_end=args.wait, timeout=args.timeout,
                      pool=kvp_pool(cfg) if args.kvp else None, config_error=config_error)


def sleep(seconds: float) -> None:
    """Every wait of a run goes through here. The launcher starts with the garbage collector off (imports
    make ~50 collections that free nothing); the first wait means the run may be long, so freeze what exists
    (the imported modules: never garbage) and collect normally from then on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
    time.sleep(seconds)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def run(cfg: config.Config, state_file: Path) -> int:
    from statemachine.lock import RunLock

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    lock = RunLock(state_file.parent / persistence.LOCK_FILE)
    try:
        durable = _prepare_state_dir(state_file.parent)
        if durable:
            lock.acquire(timeout=cfg.total_budget(), on_wait=lambda pid: log.info(
                "another run holds the lock; waiting", extra=fields(pid=pid)))
        return _run_locked(cfg, state_file, durable)
    except Terminated as t:
        if not t.logged:  # before the runner started: waiting on the lock, reading the record
            log.warning("terminated before provisioning started; nothing to resume", extra=fields(signal=t.signum))
        return 128 + t.signum
    except AgentError as e:
        log.error(e.reason, extra={"fields": e.supporting_data})
        return e.exit_code
    finally:
        lock.release()


def _prepare_state_dir(state_dir: Path) -> bool:
    """A state directory we cannot create or trust must not cost the Ready: provision without a record
    (the next boot starts over, and every step is idempotent) and say so loudly."""
    try:
        persistence.ensure_state_dir(state_dir)
    except StateFileError as e:
        log.error("state directory is unusable; provisioning without a record (the next boot starts over)",
                  extra=fields(reason=str(e)))
        return False
    return True


def _load(state_file: Path) -> persistence.Record | None:
    stale = persistence.remove_stale_temps(state_file)
    if stale:
        log.info("removed temp files of an interrupted save", extra=fields(files=stale))
    try:
        return persistence.load(state_file)
    except StateFileError as e:
        try:
            moved = persistence.quarantine(state_file)
        except StateFileError as not_moved:  # read-only: the save that follows will fail and say so too
            moved = None
            log.error("broken state record cannot be moved aside", extra=fields(reason=str(not_moved)))
        log.error("state record is broken; moved aside, provisioning starts fresh",
                  extra=fields(reason=str(e), moved_to=str(moved)))
        return None


def _run_locked(cfg: config.Config, state_file: Path, durable: bool = True) -> int:
    from statemachine.identity import read_vm_id
    from statemachine.timeutil import utc_now

    vm_id = read_vm_id(Path(cfg.identity.product_uuid_path), Path(cfg.identity.efi_path))
    record = _load(state_file) if durable else None
    from statemachine.resume import plan_start

    action, record = plan_start(record, vm_id, cfg.agent.max_boot_attempts, utc_now())
    if action == "done":
        log.info("already provisioned on this VM; nothing to do", extra=fields(vm_id=record.vm_id))
        return 0
    if action == "give_up":
        log.error("provisioning failed on every attempt; not trying again",
                  extra=fields(boot_attempts=record.boot_attempts, last_error=(record.last_error or {}).get("reason")))
        return 1
    if action == "new_vm":
        try:
            persistence.set_aside(state_file, "prev")
        except StateFileError as e:  # the old record is overwritten by the first save, if that works
            log.error("previous VM's record cannot be kept aside", extra=fields(reason=str(e)))
        log.info("record belongs to another VM (a new VM from this image); provisioning afresh",
                 extra=fields(vm_id=vm_id))
    if vm_id is None:
        log.warning("no SMBIOS product_uuid; the VM id will come from IMDS compute.vmId",
                    extra=fields(path=cfg.identity.product_uuid_path))
    log.info("starting", extra=fields(action=action, state=record.state.value, vm_id=vm_id))
    return _drive(cfg, state_file, record, durable)


def _drive(cfg: config.Config, state_file: Path, record: persistence.Record, durable: bool = True) -> int:
    from statemachine.context import Context
    from statemachine.phase import Phase
    from statemachine.runner import Runner, Store
    from states import configuring, goalstate, network_wait, reporting

    steps = {Phase.NETWORK_WAIT: network_wait.step, Phase.GOALSTATE: goalstate.step,
             Phase.REPORTING: reporting.step, Phase.CONFIGURING: configuring.step}
    network_wait.warm_imports()  # requests and lxml load while the first save waits on the disk
    store = Store(state_file, enabled=durable)
    store.save(record)
    final = Runner(Context(cfg, sleep=sleep), steps, store, reporting.report_failure).drive(record)
    if final.state is Phase.DONE:
        log.info("provisioning finished", extra=fields(state="done", recoverable_errors=len(final.recoverable_errors)))
        return 0
    log.error("provisioning failed", extra=fields(state="failed", reason=(final.last_error or {}).get("reason")))
    return 1


if __name__ == "__main__":
    sys.exit(main())
