"""Configuration objects for the unit tests, built with defaults and overridden per test."""

from __future__ import annotations

import socket
from dataclasses import replace

from chapiteau.broker.config import SocketSpec


def socket_spec(name: str = "web", **changes: object) -> SocketSpec:
    """A loopback TCP ``[socket:NAME]`` on an ephemeral port, with ``changes`` applied."""
    base = SocketSpec(
        name=name,
        family=socket.AF_INET,
        type=socket.SOCK_STREAM,
        proto=0,
        host="127.0.0.1",
        port=0,
        path=None,
        backlog=2048,
        umask=0o077,
        replace=False,
        blocking=False,
        interface=None,
        so_reuseport=False,
        where=f"/etc/circus.ini:socket:{name}",
    )
    return replace(base, **changes)
