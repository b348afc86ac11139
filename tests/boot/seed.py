"""The provisioning of Microsoft's article "Creating generalized images without a provisioning agent" (its
Python script and its systemd unit), for the boot test's comparison.

Taken verbatim from a copy of the article named by AZPROV_SEED_DIR at test time, never copied into this
repository: the first ```python block is the script, the ```bash block
that starts with [Unit] is the unit. Installed as the document says: /usr/local/azure-provisioning.py and
/etc/systemd/system/azure-provisioning.service.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A folder holding a copy of the article; without one the comparison is skipped.
SEED_DIR = Path(os.environ.get("AZPROV_SEED_DIR") or "/nonexistent")
# The es-ES revision reads the Incarnation from the goal state; the older one hard-codes 1.
SEED_FILE = "003_eb2237759283964f.txt"
UNIT = "azure-provisioning.service"
SCRIPT_PATH = "usr/local/azure-provisioning.py"

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def available() -> bool:
    return (SEED_DIR / SEED_FILE).exists()


def load(path: Path | None = None) -> tuple[str, str]:
    """(script, unit) from the article."""
    text = (path or SEED_DIR / SEED_FILE).read_text(encoding="utf-8")
    blocks = [(lang, body) for lang, body in _BLOCK.findall(text)]
    script = next(body for lang, body in blocks if lang == "python")
    unit = next(body for lang, body in blocks if lang == "bash" and body.lstrip().startswith("[Unit]"))
    return script, unit


def install(rootfs: Path, script: str, unit: str) -> None:
    (rootfs / SCRIPT_PATH).write_text(script)
    (rootfs / "etc/systemd/system" / UNIT).write_text(unit)
