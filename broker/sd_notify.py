"""The broker's side of systemd's notify protocol: one datagram to ``$NOTIFY_SOCKET``.

``Notifier.from_environment`` takes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and the watchdog's ``WATCHDOG_USEC``/``WATCHDOG_PID`` out of the
environment, so no child ever sees them, and keeps one datagram socket for the
broker's whole life. The socket is connected at once, before the broker drops root
and confines itself: its own user may not be allowed to write the socket's file, and
Landlock (ABI 6) forbids reaching an abstract socket made outside the broker's domain,
but neither is checked again on a socket already connected. ``send`` never blocks and
never raises: systemd missing a message must not stop the broker. Without
``NOTIFY_SOCKET`` every call is a no-op, so callers need no ``if systemd:``.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import MutableMapping, Sequence

from chapiteau.broker.event_log import log


class Notifier:
    """Sends ``READY=1``-style messages (with fds for ``FDSTORE=1``) to the service manager."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int = 0) -> None:
        self.address = address
        """Where each message goes; None once the socket is connected (or with no manager)."""
        self.watchdog_usec = watchdog_usec if address is not None else 0
        """How often systemd wants ``WATCHDOG=1`` (microseconds); 0: no watchdog."""
        self.main_pid = os.getpid()
        """The pid systemd started (``MAINPID=`` tells it when the broker is another one)."""
        self.sock: socket.socket | None = None
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
            with contextlib.suppress(OSError):
                self.sock.connect(address)
                self.address = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` names, removed from ``environ`` (``os.environ``).

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is absent or this process.
        """
        environ = os.environ if environ is None else environ
        path = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        watchdog_pid = environ.pop("WATCHDOG_PID", str(os.getpid()))
        if not path or path[0] not in "/@":
            return cls(None)
        ours = watchdog_pid == str(os.getpid())
        watchdog_usec = int(usec) if usec.isdigit() and ours else 0
        return cls(b"\0" + os.fsencode(path[1:]) if path[0] == "@" else path, watchdog_usec)

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
            if self.address is None:
                self.sock.sendmsg([message], ancillary)
            else:
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
