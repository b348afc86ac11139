"""The command line, parsed once by argparse for every use, the unit's own included."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from statemachine import __version__
from statemachine.errors import EX_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are EX_USAGE, as in cloud-init
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    """The help's layout. argparse would learn the terminal's width through `shutil`, which loads the
    compression modules on every boot (a formatter is made for each argument added); asking the terminal
    here spares that, with the same answer: $COLUMNS, else the terminal's width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 80
    return argparse.RawDescriptionHelpFormatter(prog, width=max(columns, 40) - 2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="azprov", formatter_class=_formatter,
                description="First-boot provisioning for Azure Linux VMs: wait for the network, report Ready "
                "to the WireServer, set the hostname from IMDS.")
    p.add_argument("--config", type=Path, metavar="FILE", help="extra config file, applied last")
    p.add_argument("--status", action="store_true", help="show the provisioning record and exit")
    p.add_argument("--json", action="store_true", help="with --status: machine-readable output")
    p.add_argument("--wait", action="store_true", help="with --status: wait until provisioning has ended")
    p.add_argument("--dry-run", action="store_true",
                   help="read the goal state and IMDS, print what each configure step would change; "
                   "change nothing, post nothing")
    p.add_argument("command", nargs="?", choices=["clean", "kvp", "status"],
                   help="clean: remove azprov's records before capturing an image; "
                   "kvp: decode the Hyper-V KVP pool (for support); status: the same as --status")
    p.add_argument("--logs", action="store_true", help="with clean: also remove azprov's log files")
    p.add_argument("--machine-id", action="store_true",
                   help="with clean: also reset /etc/machine-id to 'uninitialized'")
    p.add_argument("--kvp", action="store_true", help="with --status: also decode the Hyper-V KVP pool")
    p.add_argument("--version", action="version", version=f"azprov {__version__}")
    p.add_argument("--format", choices=["json", "text"], help="with --status: json is the same as --json")
    p.add_argument("--long", action="store_true",
                   help="with --status: every error in full and the time spent in each state")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="with --status --wait: give up after SECONDS (exit 124)")
    p.epilog = EXIT_CODES
    return p


EXIT_CODES = """exit codes:
  azprov            0 done, 1 failed, 75 another run holds the lock, 78 configuration error,
                    143/130 stopped by SIGTERM/SIGINT (the record is kept; the next run resumes)
  status, --status  0 done, running, not started or disabled; 1 failed, or the record is unusable;
                    2 done with recoverable errors; 3 interrupted (stopped mid-way, no run holds the lock;
                    the next run resumes); 77 permission denied (run as root); 124 --wait --timeout expired.
                    A broken configuration does not change the code: status shows it and reads on.
  --dry-run         0 every step can plan, 2 only recoverable problems, 1 a step would fail
  clean             0 cleaned, 75 a run holds the lock
  kvp               0 decoded, 1 no pool
  any               64 usage error, 78 configuration error (except status)
"""

# Each command's own flags, for `azprov <command> --help`.
COMMAND_FLAGS = {
    "clean": ("config", "logs", "machine_id"),
    "kvp": ("config", "json"),
    "status": ("config", "json", "format", "wait", "timeout", "long", "kvp"),
}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0: {text!r}")
    return value


def command_parser(name: str) -> argparse.ArgumentParser:
    """`azprov <name> --help`: that command's flags only, with the main parser's help texts."""
    main = build_parser()
    helps = {"clean": "Before capturing an image: remove azprov's records (refuses while a run holds the "
             "lock), optionally its logs and the machine id.",
             "kvp": "Decode the Hyper-V KVP pool, split values rejoined (for support).",
             "status": "Show the provisioning record (never takes the lock). The same as `azprov --status`."}
    p = _Parser(prog=f"azprov {name}", description=helps[name], epilog=EXIT_CODES,
                formatter_class=_formatter)
    for action in main._actions:
        if action.dest in COMMAND_FLAGS[name]:
            p._add_action(action)
    return p


def _command_help(argv: Sequence[str]) -> None:
    """Print a command's own help when `--help` comes with a command; argparse alone shows the general one."""
    if not any(a in ("-h", "--help") for a in argv):
        return
    words = [a for i, a in enumerate(argv) if a in COMMAND_FLAGS and (i == 0 or argv[i - 1] != "--config")]
    if words:
        command_parser(words[0]).parse_args(["--help"])


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed arguments; a usage error exits 64 with the usage line."""
    _command_help(argv)
    args = build_parser().parse_args(argv)
    if args.command == "status":  # cloud-init's spelling of --status
        args.command, args.status = None, True
    if args.format == "json":  # cloud-init's spelling of --json
        args.json = True
    if (args.long or args.format) and not args.status:
        build_parser().error("--long and --format go with --status")
    if args.timeout is not None and not args.wait:
        build_parser().error("--timeout goes with --status --wait")
    if (args.wait or args.kvp) and not args.status:
        build_parser().error("--wait and --kvp go with --status")
    if args.json and not (args.status or args.dry_run or args.command == "kvp"):
        build_parser().error("--json goes with --status, --dry-run or kvp")
    if (args.logs or args.machine_id) and args.command != "clean":
        build_parser().error("--logs and --machine-id go with clean")
    if sum((args.status, args.dry_run, args.command is not None)) > 1:
        build_parser().error("--status, --dry-run and the commands exclude each other")
    return args
