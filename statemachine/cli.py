"""`azprov`: the composition root. Parses the arguments, loads the config, hands the run to the runner
(or shows the status, plans a dry run, cleans), and is the one place where outcomes become exit codes.

Exit codes of a run: 0 DONE (also: already provisioned), 1 FAILED, 78 configuration error, 75 lock not
obtained, 64 usage error, 143/130 terminated by SIGTERM/SIGINT. `--status`: 0 ok, 1 failed, 2 done with
recoverable errors, 3 interrupted, 77 permission denied, 124 `--wait --timeout` expired
(statemachine/status.py). `--dry-run`: 0 every step can plan, 2 only recoverable problems, 1 a step would
fail (or the fabric cannot be read). `clean`: 0 cleaned, 75 a run holds the lock.
Heavy modules (transitions, requests, lxml) are imported only once a run has work to do, so a provisioned
VM's later boots pass through here at the cost of config, logging and argparse only.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from statemachine import config, persistence
from statemachine import log as logsetup
from statemachine.errors import EX_CONFIG, EX_TEMPFAIL, AgentError, ConfigError, LockError, Terminated
from statemachine.log import fields

log = logging.getLogger("azprov")

# Errors that are not a failed provisioning but a problem the operator must fix or a run to wait for.
EXIT_CODES: dict[type[AgentError], int] = {ConfigError: EX_CONFIG, LockError: EX_TEMPFAIL}


def exit_code(error: AgentError) -> int:
    return next((code for cls, code in EXIT_CODES.items() if isinstance(error, cls)), 1)


def main(argv: Sequence[str] | None = None) -> int:
    from statemachine import arguments

    args = arguments.parse(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config.load_layers(args.config)
    except ConfigError as e:
        print(f"azprov: {e}", file=sys.stderr)
        if args.status:  # status still finds the record, with what is valid
            cfg, problems = config.load_valid(args.config)
            return status(cfg, args, problems[0] if problems else e)
        if args.dry_run or args.command is not None:
            return exit_code(e)
        return report_config_error(args.config, e)
    logsetup.setup(cfg.log.level)
    if args.status:
        return status(cfg, args)
    if args.dry_run:
        return dry_run(cfg, args.json)
    if args.command == "clean":
        return clean(cfg, args.logs, args.machine_id)
    if args.command == "kvp":
        return kvp(cfg, args.json)
    return run(cfg)


def dry_run(cfg: config.Config, as_json: bool) -> int:
    """Plan only. Logs go to stderr so stdout holds nothing but the plan."""
    from statemachine.context import Context
    from states import dryrun

    for name in ("azprov", "statemachine", "states"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)
    try:
        result = dryrun.plan(Context(cfg, sleep=sleep))
    except AgentError as e:
        if as_json:
            print(json.dumps({"dry_run": True, "error": e.as_dict()}, indent=2))
        else:
            print(f"azprov: dry run failed: {e}", file=sys.stderr)
        return exit_code(e)
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else dryrun.render(result))
    return dry_run_code(result)


def dry_run_code(result: dict[str, Any]) -> int:
    """0: every step could plan; 2: only recoverable errors; 1: a step would fail."""
    errors = [s for s in result["steps"] if s["action"] == "error"]
    if any(not s["recoverable"] for s in errors):
        return 1
    return 2 if errors else 0


def clean(cfg: config.Config, logs: bool, machine_id: bool) -> int:
    from statemachine import clean as cleaning

    try:
        removed = cleaning.clean(cfg, logs=logs, machine_id=machine_id)
    except AgentError as e:
        print(f"azprov: clean: {e}", file=sys.stderr)
        return exit_code(e)
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


def report_config_error(explicit: Path | None, error: ConfigError) -> int:
    """A boot whose config cannot be loaded still tells the platform why, so the portal shows the broken
    file and key at once instead of a provisioning timeout forty minutes later. The fabric is reached with
    what the layers say validly (the built-in values where none does); the run itself is an ordinary one
    whose every step after the network wait fails with `error`, so the record, the boot attempt, KVP and
    the ProvisioningFailed report all go the way any other failure goes. A VM already provisioned is left
    alone. Exit 78 either way: the config still needs fixing."""
    cfg, _ = config.load_valid(explicit)
    logsetup.setup(cfg.log.level)
    log.error("configuration error; reporting it to the platform unless this VM is provisioned",
              extra={"fields": error.supporting_data})
    code = run(cfg, failing=error)
    return EX_CONFIG if code in (0, 1) else code


def run(cfg: config.Config, failing: AgentError | None = None) -> int:
    from statemachine import runner
    from statemachine.context import Context
    from statemachine.machine import Phase

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    steps = runner.failing_steps(failing) if failing is not None else None
    try:
        return 0 if runner.run(Context(cfg, sleep=sleep), steps) is Phase.DONE else 1
    except Terminated as t:
        if not t.logged:  # before the runner started: waiting on the lock, reading the record
            log.warning("terminated before provisioning started; nothing to resume", extra=fields(signal=t.signum))
        return 128 + t.signum
    except AgentError as e:
        log.error(e.reason, extra={"fields": e.supporting_data})
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
