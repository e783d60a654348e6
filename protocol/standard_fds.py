"""Make sure fds 0, 1 and 2 are open before the process opens any socket (I/O at start).

Not part of the protocol's pure modules: this is process start-up I/O that the
broker and the supervisor both need (one is never allowed to import the other),
kept beside `channel.py`, the other module the two share that touches the system.
"""

from __future__ import annotations

import os
import sys


def reserve_standard_fds() -> None:
    """Open /dev/null on whichever of fds 0, 1 and 2 is closed; call it before any socket.

    A process started with a standard fd closed would otherwise get that number
    for the next socket it binds or receives, and hand a listening socket to a
    worker as its stdin, or write its logs into it. Python leaves sys.stdin,
    sys.stdout or sys.stderr None for a closed fd: each gets a file on it.
    """
    while (fd := os.open(os.devnull, os.O_RDWR)) <= 2:
        pass
    os.close(fd)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
