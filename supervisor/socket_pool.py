"""The listening sockets the broker handed over, and which of them each worker gets.

A worker inherits only the sockets its watcher declares (Circus issue #277
fixed): the ones named in ``$(circus.sockets.NAME)`` / ``((circus.sockets.NAME))``,
``stdin_socket`` or ``sockets = a b``; a watcher with ``use_sockets = true`` and
no declared socket gets them all, as in Circus. In Circus style a socket keeps
its fd number in the child, so the substituted number is the supervisor's; in
systemd style (``socket_protocol = systemd``) they are renumbered from fd 3.
An SO_REUSEPORT socket is a fresh socket per worker, bound by the broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from chapiteau.protocol.channel import close_fds
from chapiteau.supervisor.broker_client import BrokerClient, ReceivedSocket
from chapiteau.supervisor.config import WatcherConfig

SYSTEMD_FIRST_FD = 3


@dataclass(frozen=True)
class SocketPlan:
    """The sockets of one spawn: where each fd goes and what to substitute."""

    fds: dict[int, int] = field(default_factory=dict)
    """Child fd number → the supervisor's fd to put there."""
    numbers: dict[str, int] = field(default_factory=dict)
    """Socket name → its fd number in the child, for ``$(circus.sockets.NAME)``."""
    listen_fds_names: tuple[str, ...] | None = None
    stdin: int | None = None
    owned: tuple[int, ...] = ()
    """Fds made for this spawn alone (reuseport siblings); close them once it is done."""


class SocketPool:
    """The supervisor's copy of the broker's sockets, by name."""

    def __init__(self, client: BrokerClient | None, sockets: dict[str, ReceivedSocket]) -> None:
        self.client = client
        self.sockets = sockets

    def replace(
        self, received: dict[str, ReceivedSocket], dropped: Iterable[str]
    ) -> list[ReceivedSocket]:
        """reloadconfig: forget the ``dropped`` sockets, take the ``received`` ones; return
        the sockets forgotten, for the caller to close once no worker is spawned with them."""
        old = [self.sockets.pop(name) for name in dropped if name in self.sockets]
        self.sockets.update(received)
        return old

    def fds_of(self, watcher: WatcherConfig) -> list[int]:
        """The listening fds of ``watcher``'s sockets (on_demand waits on them)."""
        return [self.sockets[name].fd for name in self.names_for(watcher)]

    def names_for(self, watcher: WatcherConfig) -> tuple[str, ...]:
        if watcher.sockets:
            return watcher.sockets
        return tuple(self.sockets) if watcher.use_sockets else ()

    def plan(self, watcher: WatcherConfig) -> SocketPlan:
        """Decide the fds of one new process of ``watcher``."""
        parent_fds: dict[str, int] = {}
        owned: list[int] = []
        try:
            for name in self.names_for(watcher):
                received = self.sockets[name]
                if received.info.reuseport and self.client is not None:
                    sibling = self.client.bind_reuseport(name)
                    owned.append(sibling.fd)
                    parent_fds[name] = sibling.fd
                else:
                    parent_fds[name] = received.fd
        except BaseException:
            # A refused sibling must not leak the ones already bound for this spawn.
            close_fds(owned)
            raise
        if watcher.socket_protocol == "systemd":
            numbers = {name: SYSTEMD_FIRST_FD + i for i, name in enumerate(parent_fds)}
            names: tuple[str, ...] | None = tuple(parent_fds)
        else:
            numbers = dict(parent_fds)
            names = None
        stdin = parent_fds.get(watcher.stdin_socket) if watcher.stdin_socket else None
        return SocketPlan(
            fds={numbers[name]: fd for name, fd in parent_fds.items()},
            numbers=numbers,
            listen_fds_names=names,
            stdin=stdin,
            owned=tuple(owned),
        )
