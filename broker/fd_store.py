"""Keep the listening sockets in systemd's fd store, so that a restarted broker gets them back.

Under systemd (``NOTIFY_SOCKET`` set, and ``FileDescriptorStoreMax=`` in the
unit), the broker pushes each listening socket it holds with ``FDSTORE=1`` and
``FDNAME=<section name>`` once bound, and again for each socket a reload binds
anew; a socket a reload closes is taken out (``FDSTOREREMOVE=1``). When the
broker dies or is restarted, systemd keeps the stored sockets open and passes
them to the next broker as ``LISTEN_FDS``/``LISTEN_FDNAMES``, which takes them
like socket-activated ones (broker/inherited.py): the kernel goes on queueing
connections meanwhile. SO_REUSEPORT masters are not stored: each start binds
its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from chapiteau.broker.binding import BoundSocket
from chapiteau.broker.sd_notify import Notifier


def store(notifier: Notifier, sockets: Mapping[str, BoundSocket]) -> None:
    """Push each of ``sockets`` (but SO_REUSEPORT masters) under its section's name."""
    for name, bound in sockets.items():
        if not bound.spec.so_reuseport:
            notifier.send("FDSTORE=1", f"FDNAME={name}", fds=[bound.fd])


def update(
    notifier: Notifier, before: Mapping[str, BoundSocket], after: Mapping[str, BoundSocket]
) -> None:
    """After a reload: remove the sockets closed from the store, push the ones bound anew."""
    for name, bound in before.items():
        if name not in after or after[name].sock is not bound.sock:
            notifier.send("FDSTOREREMOVE=1", f"FDNAME={name}")
    store(
        notifier,
        {
            name: bound
            for name, bound in after.items()
            if name not in before or before[name].sock is not bound.sock
        },
    )
