"""The broker's side of systemd's notify protocol: one datagram to ``$NOTIFY_SOCKET``.

``Notifier.from_environment`` takes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) out of the environment, so no child ever sees it, and keeps one
unconnected datagram socket for the broker's whole life. ``send`` never blocks and
never raises: systemd missing a message must not stop the broker. Without
``NOTIFY_SOCKET`` every call is a no-op, so callers need no ``if systemd:``.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import MutableMapping, Sequence

from chapiteau.broker.event_log import log


class Notifier:
    """Sends ``READY=1``-style messages (with fds for ``FDSTORE=1``) to the service manager."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` names, removed from ``environ`` (``os.environ``)."""
        environ = os.environ if environ is None else environ
        path = environ.pop("NOTIFY_SOCKET", "")
        if not path or path[0] not in "/@":
            return cls(None)
        return cls(b"\0" + os.fsencode(path[1:]) if path[0] == "@" else path)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``NOTIFY_SOCKET`` was set)."""
        return self.sock is not None

    def send(self, *assignments: str, fds: Sequence[int] = ()) -> bool:
        """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) as one message."""
        if self.sock is None:
            return False
        message = "\n".join(assignments).encode()
        rights = array.array("i", fds).tobytes()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else []
        try:
            self.sock.sendmsg([message], ancillary, 0, self.address)
        except OSError as error:
            log.warning("sd_notify_failed", message=assignments[0], error=str(error))
            return False
        return True

    def close(self) -> None:
        """Close the socket; later ``send`` calls do nothing."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
