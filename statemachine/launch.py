"""The `azprov` console script: start-up work that must happen before the CLI module is even imported.

1. The garbage collector is switched off. Importing requests, urllib3 and lxml allocates ~100k objects that all
   stay alive, and the default thresholds run ~50 collections over them that free nothing (about a tenth of
   the import time; bench/RESULTS.md). `cli` turns it back on, after freezing what exists, the first time the
   run has to wait (a retry or a network poll): a long run still gets collected, a short one never pays.
2. The later-boot fast path (`fastpath.already_done`): a provisioned VM exits here, before config, logging or
   argparse are imported.
3. Before the interpreter shuts down, everything is frozen, so its final collection has nothing to walk.
`python -m statemachine.cli` skips all three and behaves the same, only slower.
"""

from __future__ import annotations

import gc
import sys


def main() -> int:
    gc.disable()
    from statemachine import fastpath

    if fastpath.already_done(sys.argv[1:]):
        return 0
    from statemachine import cli

    code = cli.main()
    # Interpreter shutdown runs one last full collection over every module's objects (~20 ms after
    # importing requests and lxml, more than the whole protocol exchange). Frozen objects are skipped.
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
