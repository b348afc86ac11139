"""Which VM is this? The SMBIOS product UUID, normalised the way the platform's `compute.vmId` is.

On Gen1 (BIOS) VMs, Hyper-V exposes the first three UUID fields byte-swapped relative to `vmId`; Gen2
(UEFI, /sys/firmware/efi present) does not. Old kernels report upper case. Where SMBIOS is absent
(containers, some hypervisors), or holds the all-zero or all-FF placeholder UUID, we return None and the
VM id comes from IMDS `compute.vmId` (`vm_id_source = "imds"`).
"""

from __future__ import annotations

import re
from pathlib import Path

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# SMBIOS's "not present" and "not set": shared by every VM that has them, so no identity at all.
PLACEHOLDERS = frozenset({"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"})


def normalize(raw: str, gen1: bool) -> str | None:
    """Pure: the vmId for a raw product_uuid, or None when it is not a UUID or is a placeholder."""
    text = raw.strip()
    if not _UUID.fullmatch(text) or text.lower() in PLACEHOLDERS:
        return None
    raw_bytes = bytes.fromhex(text.replace("-", ""))
    if gen1:  # swap the first three fields back (what uuid.UUID(bytes_le=...) does; `uuid` costs ~2 ms)
        raw_bytes = raw_bytes[3::-1] + raw_bytes[5:3:-1] + raw_bytes[7:5:-1] + raw_bytes[8:]
    h = raw_bytes.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_vm_id(product_uuid_path: Path, efi_path: Path) -> str | None:
    try:
        raw = product_uuid_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return normalize(raw, gen1=not efi_path.exists())
