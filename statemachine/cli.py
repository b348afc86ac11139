"""`azprov`: the composition root. Parses arguments, loads config, wires the steps to the runner, and is
the only place where errors become exit codes.

Exit codes of a run: 0 DONE, 1 FAILED, 78 configuration error, 75 lock not obtained, 64 usage error,
143/130 terminated by SIGTERM/SIGINT. `--status`: 0 ok (done, running, not started), 1 failed,
2 done with recoverable errors. The DONE fast path (a provisioned VM's later boots) reads the record and
exits without importing transitions, requests or lxml.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from statemachine import __version__, config, persistence
from statemachine import log as logsetup
from statemachine.errors import EX_USAGE, AgentError, ConfigError, StateFileError, Terminated
from statemachine.log import fields

log = logging.getLogger("azprov")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are EX_USAGE, as in cloud-init
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="azprov", description="First-boot provisioning for Azure Linux VMs: wait for the "
                "network, report Ready to the WireServer, set the hostname from IMDS.")
    p.add_argument("--config", type=Path, metavar="FILE", help="extra config file, applied last")
    p.add_argument("--status", action="store_true", help="show the provisioning record and exit")
    p.add_argument("--json", action="store_true", help="with --status: machine-readable output")
    p.add_argument("--wait", action="store_true", help="with --status: wait until provisioning has ended")
    p.add_argument("--version", action="version", version=f"azprov {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.json or args.wait) and not args.status:
        build_parser().error("--json and --wait go with --status")
    try:
        cfg = config.load_layers(args.config)
    except ConfigError as e:
        print(f"azprov: {e}", file=sys.stderr)
        return e.exit_code
    logsetup.setup(cfg.log.level)
    state_file = cfg.state_dir / persistence.STATE_FILE
    if args.status:
        return status(state_file, args.json, args.wait)
    return run(cfg, state_file)


def status(state_file: Path, as_json: bool, wait: bool) -> int:
    from statemachine import status as st

    try:
        while wait and not st.is_settled(state_file):
            time.sleep(0.2)
        text, code = st.show(state_file, as_json)
    except StateFileError as e:
        if as_json:
            print(json.dumps({"state": "unknown", "last_error": e.as_dict()}, indent=2))
        else:
            print(f"azprov: {e}", file=sys.stderr)
        return 1
    print(text)
    return code


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def run(cfg: config.Config, state_file: Path) -> int:
    from statemachine.lock import RunLock

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    lock = RunLock(state_file.parent / persistence.LOCK_FILE)
    try:
        persistence.ensure_state_dir(state_file.parent)
        lock.acquire(timeout=cfg.total_budget(),
                     on_wait=lambda pid: log.info("another run holds the lock; waiting", extra=fields(pid=pid)))
        return _run_locked(cfg, state_file)
    except Terminated as t:
        return 128 + t.signum
    except AgentError as e:
        log.error(e.reason, extra={"fields": e.supporting_data})
        return e.exit_code
    finally:
        lock.release()


def _run_locked(cfg: config.Config, state_file: Path) -> int:
    from statemachine.identity import read_vm_id
    from statemachine.timeutil import utc_now

    vm_id = read_vm_id(Path(cfg.identity.product_uuid_path), Path(cfg.identity.efi_path))
    try:
        record = persistence.load(state_file)
    except StateFileError as e:
        moved = persistence.quarantine(state_file)
        log.error("state record is broken; moved aside, provisioning starts fresh",
                  extra=fields(reason=str(e), moved_to=str(moved)))
        record = None
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
        persistence.set_aside(state_file, "prev")
        log.info("record belongs to another VM (a new VM from this image); provisioning afresh",
                 extra=fields(vm_id=vm_id))
    if vm_id is None:
        log.warning("no SMBIOS product_uuid; the VM id will come from IMDS compute.vmId",
                    extra=fields(path=cfg.identity.product_uuid_path))
    log.info("starting", extra=fields(action=action, state=record.state.value, vm_id=vm_id))
    return _drive(cfg, state_file, record)


def _drive(cfg: config.Config, state_file: Path, record: persistence.Record) -> int:
    from statemachine.context import Context
    from statemachine.phase import Phase
    from statemachine.runner import Runner, Store
    from states import configuring, goalstate, network_wait, reporting

    steps = {Phase.NETWORK_WAIT: network_wait.step, Phase.GOALSTATE: goalstate.step,
             Phase.REPORTING: reporting.step, Phase.CONFIGURING: configuring.step}
    store = Store(state_file)
    store.save(record)
    final = Runner(Context(cfg), steps, store, reporting.report_failure).drive(record)
    if final.state is Phase.DONE:
        log.info("provisioning finished", extra=fields(state="done", recoverable_errors=len(final.recoverable_errors)))
        return 0
    log.error("provisioning failed", extra=fields(state="failed", reason=(final.last_error or {}).get("reason")))
    return 1


if __name__ == "__main__":
    sys.exit(main())
