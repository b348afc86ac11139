"""Refuse every network destination but loopback, inside a benchmark driver process.

The peers hard-code the WireServer and IMDS addresses in places. The drivers point them at the loopback fake
fabric, and this guard makes sure that a path we did not redirect fails loudly instead of sending a packet
anywhere else: `socket.connect`, `connect_ex`, `sendto` and the resolver functions accept only loopback
literals (127.0.0.0/8, ::1) and "localhost". Imported first by every driver; `check_url` vets the URLs
the drivers are given before anything uses them.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class NonLoopbackError(OSError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _vet(host: Any) -> None:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not is_loopback(host):
        raise NonLoopbackError(f"benchmark guard: refusing non-loopback destination {host!r}")


def check_url(url: str) -> str:
    """The URL itself if its host is a loopback address; raise otherwise."""
    _vet(urlsplit(url).hostname or "")
    return url


def driver_args(description: str | None, peer: bool = True) -> argparse.Namespace:
    """Every driver's command line: loopback-only fabric URLs, the hostname file, and (for a peer) its
    extracted dist-packages directory, put first on sys.path."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--wireserver", required=True, type=check_url, help="http://127.0.0.1:PORT")
    p.add_argument("--imds", required=True, type=check_url, help="http://127.0.0.1:PORT")
    p.add_argument("--hostname-file", type=Path, required=True)
    if peer:
        p.add_argument("--peer-path", required=True, help="the extracted dist-packages directory")
    args = p.parse_args()
    if peer:
        sys.path.insert(0, args.peer_path)
    return args


def install() -> None:
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto
    original_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _vet(address[0])
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _vet(address[0])
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _vet(address[0])
        return original_sendto(self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        _vet(host)
        return original_getaddrinfo(host, *args, **kwargs)

    def guarded(original: Any) -> Any:
        def call(host: Any, *args: Any, **kwargs: Any) -> Any:
            _vet(host)
            return original(host, *args, **kwargs)

        return call

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = guarded(socket.gethostbyname)
    socket.gethostbyname_ex = guarded(socket.gethostbyname_ex)
    socket.gethostbyaddr = guarded(socket.gethostbyaddr)
