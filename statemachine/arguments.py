"""The command line, parsed once by argparse for every use, the unit's own included."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="azprov", description="First-boot provisioning for Azure Linux VMs: wait for the "
                "network, report Ready to the WireServer, set the hostname from IMDS.")
    p.add_argument("--config", type=Path, metavar="FILE", help="extra config file, applied last")
    p.add_argument("--status", action="store_true", help="show the provisioning record and exit")
    p.add_argument("--json", action="store_true", help="with --status: machine-readable output")
    p.add_argument("--wait", action="store_true", help="with --status: wait until provisioning has ended")
    p.add_argument("--dry-run", action="store_true",
                   help="read the goal state and IMDS, print what each configure step would change; "
                   "change nothing, post nothing")
    p.add_argument("command", nargs="?", choices=["clean", "kvp"],
                   help="clean: remove azprov's records before capturing an image; "
                   "kvp: decode the Hyper-V KVP pool (for support)")
    p.add_argument("--logs", action="store_true", help="with clean: also remove azprov's log files")
    p.add_argument("--machine-id", action="store_true",
                   help="with clean: also reset /etc/machine-id to 'uninitialized'")
    p.add_argument("--kvp", action="store_true", help="with --status: also decode the Hyper-V KVP pool")
    p.add_argument("--version", action="version", version=f"azprov {__version__}")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed arguments; a usage error exits 64 with the usage line."""
    args = build_parser().parse_args(argv)
    if (args.wait or args.kvp) and not args.status:
        build_parser().error("--wait and --kvp go with --status")
    if args.json and not (args.status or args.dry_run or args.command == "kvp"):
        build_parser().error("--json goes with --status, --dry-run or kvp")
    if (args.logs or args.machine_id) and args.command != "clean":
        build_parser().error("--logs and --machine-id go with clean")
    if sum((args.status, args.dry_run, args.command is not None)) > 1:
        build_parser().error("--status, --dry-run and the commands exclude each other")
    return args
