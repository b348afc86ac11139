"""`import requests` without its optional character-set detector.

requests imports `charset_normalizer` (or `chardet`) at import time, only to guess the encoding of a text
body (`Response.text`, `.apparent_encoding`). azprov never decodes a body through requests: the fabric
clients read raw bytes and parse them themselves. The detector is ~13% of `import requests` (bench venv, 31
runs: 132 ms → 117 ms CPU), so it is kept out: while requests is first imported, both names are marked
absent in `sys.modules`, which requests handles by design (it then falls back to UTF-8, and warns, which
is silenced here). The marks are removed again at once, and if a requests release ever needs a detector
to import at all, the import is simply retried the ordinary way.
Import `requests` from here (`from statemachine.requests_lean import requests`), before anything else does.
"""

from __future__ import annotations

import sys
import warnings

_DETECTORS = ("charset_normalizer", "chardet")


def _import_without_detector() -> None:
    marked = [name for name in _DETECTORS if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import X" now raises ImportError
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")
            import requests  # noqa: F401
    except ImportError:
        for name in [n for n in sys.modules if n == "requests" or n.startswith("requests.")]:
            del sys.modules[name]
    finally:
        for name in marked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


if "requests" not in sys.modules:
    _import_without_detector()

import requests  # noqa: E402  (the import above made this a dictionary lookup)

__all__ = ["requests"]
