"""The `azprov` console script: the composition root (`cli`) with two process-level settings around it.

1. The garbage collector is off while modules import: importing requests, urllib3 and lxml allocates ~100k
   objects that all stay alive, and the default thresholds would run ~50 collections over them that free
   nothing. `cli.sleep` turns it back on, after freezing what exists, the first time a run has to wait.
2. The process leaves by `os._exit` once stdout, stderr and logging are flushed: a oneshot needs neither the
   final collection over every import's objects nor the clearing of ~300 modules, and every file azprov
   writes is closed (and fsynced) before `cli.main()` returns.
`python -m statemachine.cli` runs the same code without either, only slower.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn


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
    gc.disable()
    from statemachine import cli

    try:
        code = cli.main()
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    leave(code)


if __name__ == "__main__":
    main()
