"""The listening sockets the broker handed over, and which of them each worker gets.

A worker inherits only the sockets its watcher declares (Circus issue #277
fixed): the ones named in ``$(circus.sockets.NAME)`` / ``((circus.sockets.NAME))``,
``stdin_socket`` or ``sockets = a b``; a watcher with ``use_sockets = true`` and
no declared socket gets them all, as in Circus. In Circus style a socket keeps
its fd number in the child, so the substituted number is the supervisor's; in
systemd style (``socket_protocol = systemd``) they are renumbered from fd 3.
An SO_REUSEPORT socket is a fresh socket per worker, bound by the broker; when
the broker steers its connections, its `Doors` say which workers get new ones
(`chapiteau.supervisor.doors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from chapiteau.protocol.channel import close_fds
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError, ReceivedSocket
from chapiteau.supervisor.config import WatcherConfig
from chapiteau.supervisor.doors import Doors

log = structlog.get_logger("chapiteau.supervisor.socket_pool")

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
    siblings: dict[str, int] = field(default_factory=dict)
    """Fds made for this spawn alone (reuseport siblings), by socket name: the spawn
    closes them, or keeps them until the worker's doors open."""


class SocketPool:
    """The supervisor's copy of the broker's sockets, by name."""

    def __init__(self, client: BrokerClient | None, sockets: dict[str, ReceivedSocket]) -> None:
        self.client = client
        self.sockets = sockets
        self.doors: dict[str, Doors] = {}
        self._steer(sockets.values())

    def replace(
        self, received: dict[str, ReceivedSocket], dropped: Iterable[str]
    ) -> list[ReceivedSocket]:
        """reloadconfig: forget the ``dropped`` sockets, take the ``received`` ones; return
        the sockets forgotten, for the caller to close once no worker is spawned with them."""
        old = [self.sockets.pop(name) for name in dropped if name in self.sockets]
        for socket in old:
            doors = self.doors.pop(socket.info.name, None)
            if doors is not None:
                doors.close_maps()
        self.sockets.update(received)
        self._steer(received.values())
        return old

    def _steer(self, sockets: Iterable[ReceivedSocket]) -> None:
        """Take the steering maps of the ``so_reuseport`` sockets that have them."""
        for received in sockets:
            if not received.info.reuseport or self.client is None:
                continue
            try:
                count_map, slots_map = self.client.get_steering(received.info.name)
            except BrokerError as exc:
                log.warning("no_steering", socket=received.info.name, reason=str(exc))
                continue
            self.doors[received.info.name] = Doors(received.info.name, count_map, slots_map)

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
        siblings: dict[str, int] = {}
        try:
            for name in self.names_for(watcher):
                received = self.sockets[name]
                if received.info.reuseport and self.client is not None:
                    siblings[name] = self.client.bind_reuseport(name).fd
                    parent_fds[name] = siblings[name]
                else:
                    parent_fds[name] = received.fd
        except BaseException:
            # A refused sibling must not leak the ones already bound for this spawn.
            close_fds(siblings.values())
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
            siblings=siblings,
        )
