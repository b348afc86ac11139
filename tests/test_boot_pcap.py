"""The boot test's DHCP capture parser (tests/boot/pcap.py) on hand-built frames, and on any bytes at all."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "boot"))

import pcap  # noqa: E402

MAC = bytes.fromhex("525400123456")


def dhcp_payload(kind: int, hostname: bytes | None = None, fqdn: bytes | None = None,
                 requested: bytes | None = None) -> bytes:
    fixed = bytearray(236)
    fixed[0] = 1  # BOOTREQUEST
    fixed[28:34] = MAC
    opts = bytes([53, 1, kind])
    if requested:
        opts += bytes([50, 4]) + requested
    if hostname is not None:
        opts += bytes([12, len(hostname)]) + hostname
    if fqdn is not None:
        opts += bytes([81, len(fqdn)]) + fqdn
    return bytes(fixed) + pcap.MAGIC_COOKIE + opts + b"\xff"


def frame(payload: bytes, sport: int = 68, dport: int = 67, vlan: bool = False) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\0" * 4, b"\xff" * 4) + udp
    eth = b"\xff" * 6 + MAC + (b"\x81\x00\x00\x01" if vlan else b"") + b"\x08\x00"
    return eth + ip


def capture(frames: list[bytes], magic: bytes = b"\xd4\xc3\xb2\xa1", order: str = "<") -> bytes:
    out = magic + struct.pack(order + "HHiIII", 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 500_000, len(f), len(f)) + f
    return out


def test_requests_with_hostname_and_fqdn() -> None:
    data = capture([
        frame(dhcp_payload(1, hostname=b"unprovisioned")),
        frame(dhcp_payload(2), sport=67, dport=68),
        frame(dhcp_payload(3, hostname=b"web-01", requested=bytes([10, 0, 2, 15]))),
        frame(dhcp_payload(3, fqdn=b"\x05\x00\x00\x06web-01\x07example\x00"), vlan=True),
        frame(dhcp_payload(3, fqdn=b"\x00\x00\x00web-02.")),
    ])
    got = pcap.dhcp_messages(data)
    assert [m.kind for m in got] == ["DISCOVER", "OFFER", "REQUEST", "REQUEST", "REQUEST"]
    assert got[0].hostname == "unprovisioned" and got[0].client_mac == "52:54:00:12:34:56"
    assert got[2].requested == "10.0.2.15" and got[2].names() == ("web-01",)
    assert got[3].fqdn == "web-01.example" and got[4].fqdn == "web-02"
    assert got[1].t == 1_700_000_001.5


def test_big_endian_nanosecond_capture() -> None:
    data = capture([frame(dhcp_payload(3, hostname=b"x"))], magic=b"\xa1\xb2\x3c\x4d", order=">")
    [msg] = pcap.dhcp_messages(data)
    assert msg.hostname == "x" and abs(msg.t - 1_700_000_000.0005) < 1e-6


def test_other_traffic_and_truncation_are_skipped() -> None:
    good = frame(dhcp_payload(3, hostname=b"web-01"))
    dns = frame(dhcp_payload(3, hostname=b"nope"), sport=5353, dport=53)
    data = capture([dns, good, good])
    assert [m.hostname for m in pcap.dhcp_messages(data)] == ["web-01", "web-01"]
    assert [m.hostname for m in pcap.dhcp_messages(data[:-10])] == ["web-01"]  # the cut record is dropped
    assert pcap.dhcp_messages(b"") == [] and pcap.dhcp_messages(b"not a pcap file at all....") == []


@given(st.binary(max_size=600))
def test_any_bytes_parse_without_raising(blob: bytes) -> None:
    pcap.dhcp_messages(capture([blob]))
    pcap.dhcp_messages(blob)
    pcap.options(blob)
    pcap.fqdn_name(blob)


def test_address_gaps_from_ip_monitor_lines() -> None:
    import run_boot

    journal = (
        "[   48.5] template ip[173]: 2: ens2    inet 168.0.2.15/7 metric 1024 brd 169.255.255.255 scope global\n"
        "[   56.6] web-01 ip[173]: Timestamp: Thu Dec  3 09:37:31 2026 787373 usec\n"
        "[   56.685] web-01 ip[173]: Deleted 2: ens2    inet 168.0.2.15/7 metric 1024 brd 169.255.255.255 scope\n"
        "[   56.810] web-01 ip[173]: 2: ens2    inet 168.0.2.15/7 metric 1024 brd 169.255.255.255 scope global\n"
        "[   60.0] web-01 ip[173]: Deleted 2: ens2    inet 168.0.2.15/7 scope global\n"
        "[   61.0] web-01 ip[173]: 2: ens2    inet 168.0.2.99/7 scope global\n")
    assert run_boot.address_gaps(journal) == [("168.0.2.15/7", 0.125), ("168.0.2.15/7", None)]
    assert run_boot.address_gaps(journal.splitlines()[0]) == []
