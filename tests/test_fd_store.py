"""Tests for broker/fd_store.py: what the broker tells systemd's fd store, and when."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from chapiteau.broker import fd_store
from chapiteau.broker.binding import BoundSocket
from chapiteau.broker.sd_notify import Notifier
from tests.specs import socket_spec


class Recorder(Notifier):
    """A notifier that keeps each message instead of sending it."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[tuple[tuple[str, ...], tuple[int, ...]]] = []

    def send(self, *assignments: str, fds: Sequence[int] = ()) -> bool:
        self.sent.append((assignments, tuple(fds)))
        return True


def _bound(name: str, **changes: object) -> BoundSocket:
    return BoundSocket(socket_spec(name, **changes), socket.socket())


def test_each_socket_but_a_reuseport_master_is_stored_under_its_name():
    web, master = _bound("web"), _bound("fast", so_reuseport=True)
    notifier = Recorder()
    fd_store.store(notifier, {"web": web, "fast": master})
    assert notifier.sent == [(("FDSTORE=1", "FDNAME=web"), (web.fd,))]
    web.sock.close()
    master.sock.close()


def test_a_reload_removes_closed_sockets_and_stores_new_ones_only():
    kept, removed, rebound, added = (_bound(n) for n in ("kept", "gone", "moved", "new"))
    moved_again = _bound("moved")
    adjusted = BoundSocket(socket_spec("kept", backlog=5), kept.sock)
    notifier = Recorder()
    fd_store.update(
        notifier,
        {"kept": kept, "gone": removed, "moved": rebound},
        {"kept": adjusted, "moved": moved_again, "new": added},
    )
    assert notifier.sent == [
        (("FDSTOREREMOVE=1", "FDNAME=gone"), ()),
        (("FDSTOREREMOVE=1", "FDNAME=moved"), ()),
        (("FDSTORE=1", "FDNAME=moved"), (moved_again.fd,)),
        (("FDSTORE=1", "FDNAME=new"), (added.fd,)),
    ]
    for bound in (kept, removed, rebound, added, moved_again):
        bound.sock.close()
