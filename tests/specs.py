"""Configuration objects for the unit tests, built with defaults and overridden per test."""

from __future__ import annotations

import os
import pwd
import socket

from chapiteau.broker.config import SocketSpec
from chapiteau.broker.privileges import ServiceUser
from chapiteau.protocol.records import replace


def service_user() -> ServiceUser:
    """The service user the broker guards against: nobody under root, else the caller."""
    entry = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, (entry.pw_gid,))


USER = service_user()


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
