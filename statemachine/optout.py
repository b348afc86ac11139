"""Opt-out: is azprov switched off on this machine, and why.

The unit file enforces the same two switches with `ConditionPathExists=!/etc/azprov/disabled` and
`ConditionKernelCommandLine=!azprov=disabled`, so systemd never starts a disabled agent. This module states
them for everything that runs anyway (`azprov --status` on an opted-out VM says "disabled", not "has not run
yet"). The marker is looked up under `paths.root`, where an image build points it.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "etc/azprov/disabled"
CMDLINE = Path("/proc/cmdline")
KERNEL_ARGUMENT = "azprov=disabled"


def kernel_disabled(cmdline: str) -> bool:
    """`azprov=disabled` as a word of the kernel command line (as systemd's condition matches it)."""
    return KERNEL_ARGUMENT in cmdline.split()


def disabled_reason(root: Path, cmdline: Path = CMDLINE) -> str | None:
    """Why azprov is switched off, or None when it is not. Unreadable files count as "not disabled"."""
    marker = root / MARKER
    try:
        if marker.exists() or marker.is_symlink():
            return f"marker file {marker} exists"
    except OSError:
        pass
    try:
        text = cmdline.read_text(errors="replace")
    except OSError:
        return None
    return f"{KERNEL_ARGUMENT} on the kernel command line" if kernel_disabled(text) else None
