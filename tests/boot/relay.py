"""guestfwd relay: QEMU spawns this once per guest connection (`guestfwd=tcp:ADDR:80-cmd:...`), with the
guest's TCP stream on stdin/stdout; it copies bytes both ways to 127.0.0.1:PORT (the fake fabric).

It can only ever connect to the host's loopback: the address is fixed, only the port is an argument. Its
stderr is the guest's socket too, so it never writes diagnostics; it just closes on any error.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

LOOPBACK = "127.0.0.1"


def port_of(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit() or not 0 < int(argv[1]) < 65536:
        raise SystemExit(2)
    return int(argv[1])


def pump(guest_in: int, guest_out: int, upstream: socket.socket) -> None:
    """Copy until both directions have ended."""
    sel = selectors.DefaultSelector()
    sel.register(guest_in, selectors.EVENT_READ, "guest")
    sel.register(upstream, selectors.EVENT_READ, "upstream")
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            if key.data == "guest":
                data = os.read(guest_in, 65536)
                if data:
                    upstream.sendall(data)
                    continue
                upstream.shutdown(socket.SHUT_WR)
            else:
                data = upstream.recv(65536)
                if data:
                    _write_all(guest_out, data)
                    continue
                # The fabric closed its side: a half-close can't be passed through a pipe, so end here.
                return
            sel.unregister(key.fileobj)
            open_ends -= 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    port = port_of(sys.argv)
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as upstream:
            upstream.settimeout(None)
            pump(0, 1, upstream)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
