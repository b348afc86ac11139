"""The `azprov` console script: start-up work that must happen before the CLI module is even imported.

1. The garbage collector is switched off. Importing requests, urllib3 and lxml allocates ~100k objects that all
   stay alive, and the default thresholds run ~50 collections over them that free nothing (about a tenth of
   the import time; bench/RESULTS.md). `cli` turns it back on, after freezing what exists, the first time the
   run has to wait (a retry or a network poll): a long run still gets collected, a short one never pays.
2. The later-boot fast path (`fastpath.already_done`): a provisioned VM exits here, before config, logging or
   argparse are imported.
3. The process leaves without the interpreter's teardown (`leave()`): with requests, urllib3 and lxml loaded
   that is a final collection over ~100k objects (~20 ms) and the clearing of ~300 modules (~4 ms), and a
   oneshot needs neither: every file azprov writes is closed (and fsynced) before `run()` returns.
`python -m statemachine.cli` skips all three and behaves the same, only slower.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing would cost the later-boot fast path ~2 ms
if TYPE_CHECKING:
    from typing import NoReturn


def run() -> int:
    """Everything but the exit; tests call this in-process."""
    gc.disable()
    from statemachine import fastpath

    if fastpath.already_done(sys.argv[1:]):
        return 0
    from statemachine import cli

    return cli.main()


def leave(code: int) -> NoReturn:
    """Flush what is buffered (stdout, stderr, logging's handlers), then exit at once."""
    try:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # stdout closed under us, say: the ordinary exit reports it
        gc.freeze()  # still spare the final collection its walk over every import's objects
        sys.exit(code)
    os._exit(code)


def main() -> NoReturn:
    """The `azprov` console script."""
    leave(run())


if __name__ == "__main__":
    main()
