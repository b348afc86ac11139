"""DHCP messages in a packet capture of the guest's NIC (QEMU `-object filter-dump`), parsed by hand.

Pure functions over bytes: the classic pcap file (either byte order, micro- or nanosecond stamps), Ethernet
(with or without one 802.1Q tag), IPv4, UDP between ports 67 and 68, BOOTP and its DHCP options. Anything
truncated or malformed is skipped, never raised: a capture cut short by a power-off must still be readable.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import NamedTuple

MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE",
                 8: "INFORM"}
MAGIC_COOKIE = b"\x63\x82\x53\x63"
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
LINKTYPE_ETHERNET = 1


class Dhcp(NamedTuple):
    t: float  # capture time stamp (seconds since the epoch, host clock)
    kind: str  # "REQUEST", "ACK", ... or "BOOTP" without option 53
    client_mac: str
    ciaddr: str
    requested: str | None  # option 50
    hostname: str | None  # option 12
    fqdn: str | None  # option 81's name (ASCII or DNS wire format)

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.hostname, self.fqdn) if n)


def packets(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(time stamp, frame) of each record of a classic pcap file with Ethernet frames."""
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        return
    order, unit = _PCAP_MAGIC[data[:4]]
    if struct.unpack(order + "I", data[20:24])[0] != LINKTYPE_ETHERNET:
        return
    at = 24
    while at + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(order + "IIII", data[at:at + 16])
        frame = data[at + 16:at + 16 + incl]
        if len(frame) < incl:
            return
        yield sec + frac * unit, frame
        at += 16 + incl


def udp_payload(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an Ethernet/IPv4/UDP frame, else None."""
    eth_type_at = 12
    if frame[12:14] == b"\x81\x00":  # one VLAN tag
        eth_type_at = 16
    if frame[eth_type_at:eth_type_at + 2] != b"\x08\x00":
        return None
    ip = frame[eth_type_at + 2:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    header = (ip[0] & 0x0F) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    udp = ip[header:total] if header <= total <= len(ip) else b""
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack(">HHH", udp[:6])
    return sport, dport, udp[8:max(8, min(length, len(udp)))]


def options(blob: bytes) -> dict[int, bytes]:
    """DHCP options after the magic cookie; the first occurrence of each code wins."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(blob):
        code = blob[at]
        if code == 255:
            break
        if code == 0:
            at += 1
            continue
        if at + 1 >= len(blob):
            break
        size = blob[at + 1]
        found.setdefault(code, blob[at + 2:at + 2 + size])
        at += 2 + size
    return found


def fqdn_name(value: bytes) -> str | None:
    """Option 81: flags, two obsolete RCODE bytes, then the name (DNS wire format when flag E is set)."""
    if len(value) < 4:
        return None
    flags, name = value[0], value[3:]
    if not flags & 0x04:
        return name.decode("ascii", "replace").rstrip(".") or None
    labels, at = [], 0
    while at < len(name) and name[at]:
        labels.append(name[at + 1:at + 1 + name[at]].decode("ascii", "replace"))
        at += 1 + name[at]
    return ".".join(labels) or None


def bootp(t: float, payload: bytes) -> Dhcp | None:
    if len(payload) < 240 or payload[236:240] != MAGIC_COOKIE:
        return None
    opts = options(payload[240:])
    kind = MESSAGE_TYPES.get(opts.get(53, b"\0")[0], "BOOTP") if opts.get(53) else "BOOTP"
    requested = str(ipaddress.IPv4Address(opts[50])) if len(opts.get(50, b"")) == 4 else None
    host = opts.get(12)
    return Dhcp(t=t, kind=kind, client_mac=payload[28:34].hex(":"), ciaddr=str(ipaddress.IPv4Address(payload[12:16])),
                requested=requested, hostname=host.rstrip(b"\0").decode("ascii", "replace") if host else None,
                fqdn=fqdn_name(opts[81]) if 81 in opts else None)


def dhcp_messages(data: bytes) -> list[Dhcp]:
    """Every DHCP/BOOTP message in the capture, in capture order."""
    out = []
    for t, frame in packets(data):
        udp = udp_payload(frame)
        if udp is None or {udp[0], udp[1]} != {67, 68}:
            continue
        msg = bootp(t, udp[2])
        if msg is not None:
            out.append(msg)
    return out
