"""Answer the supervisor's few questions: the broker's whole request vocabulary.

Like OpenSSH's monitor, the broker handles a short, fixed list of requests,
each by a small method that validates, acts and replies. A peer must say hello
first; any fd a peer sends is closed; a request for a socket the config does
not name is refused. Nothing a peer sends can make the broker bind an address,
create a path or run a program that the config did not name.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from chapiteau.broker.binding import BindError, BoundSocket, bind_reuseport_sibling
from chapiteau.broker.event_log import log
from chapiteau.broker.held import PIPE, HeldFds
from chapiteau.broker.socket_table import ReloadError
from chapiteau.protocol.broker_messages import (
    PROTOCOL_VERSION,
    BindReuseport,
    Error,
    GetSockets,
    GetSteering,
    Handover,
    Held,
    Hello,
    HoldMemfd,
    HoldPipes,
    ListSockets,
    Message,
    Ok,
    ProtocolError,
    Ready,
    Release,
    ReloadConfig,
    ReloadDone,
    Reloaded,
    Shutdown,
    SocketList,
    Sockets,
    SteeringMaps,
    TakeHeld,
    Welcome,
)
from chapiteau.protocol.channel import Received, close_fds


class Peer:
    """The state of one connection: whether it said hello, and what it may still hold."""

    __slots__ = ("name", "greeted", "hello_by", "fds_sent")

    def __init__(
        self,
        name: str,
        greeted: bool = False,
        hello_by: float | None = None,
        fds_sent: int = 0,
    ) -> None:
        self.name = name
        self.greeted = greeted
        # When an accepted connection that has not said hello is dropped (monotonic clock).
        self.hello_by = hello_by
        # Fds in the last reply that carried some: in flight while the peer has unread replies.
        self.fds_sent = fds_sent


class Reply:
    """What to send back, the fds to attach, and sockets to close once sent."""

    __slots__ = ("message", "fds", "close_after", "discard")

    def __init__(
        self,
        message: Message,
        fds: list[int] | None = None,
        close_after: list[BoundSocket] | None = None,
        discard: list[int] | None = None,
    ) -> None:
        self.message = message
        self.fds = [] if fds is None else fds
        self.close_after = [] if close_after is None else close_after
        # Fds made for this reply only (a new pipe's write end): closed once sent.
        self.discard = [] if discard is None else discard


class Service:
    """The request handlers, over the broker's table of bound sockets."""

    def __init__(
        self,
        sockets: dict[str, BoundSocket],
        reload: Callable[[], Reloaded],
        shutdown: Callable[[], None],
        ready: Callable[[Peer], None],
        reload_done: Callable[[Peer, bool], None],
        held: HeldFds,
        handover: Callable[[Peer], None],
    ) -> None:
        self.sockets = sockets
        self._reload = reload
        self._shutdown = shutdown
        self._ready = ready
        self._reload_done = reload_done
        self.held = held
        """Pipes and memfds kept for the supervisor's next generation (broker/held.py)."""
        self._handover = handover

    def handle(self, peer: Peer, received: Received) -> Reply:
        """Answer one request; never raises for anything the peer sent."""
        message = received.message
        if received.fds:
            close_fds(received.fds)
            return self._refuse(peer, "unexpected_fds", f"{message.TYPE} must not carry fds")
        if isinstance(message, Hello):
            return self._hello(peer, message)
        if not peer.greeted:
            return self._refuse(peer, "not_hello", "say hello first")
        handler = self._handlers.get(type(message))
        if handler is None:
            return self._refuse(peer, "bad_message", f"{message.TYPE} is not a request")
        return handler(self, peer, message)

    def _refuse(self, peer: Peer, code: str, reason: str) -> Reply:
        log.warning("request_refused", peer=peer.name, code=code, reason=reason)
        return Reply(Error(code, reason))

    def _hello(self, peer: Peer, message: Hello) -> Reply:
        if PROTOCOL_VERSION not in message.versions:
            return self._refuse(
                peer,
                "unsupported_version",
                f"this broker speaks version {PROTOCOL_VERSION}, the peer {list(message.versions)}",
            )
        peer.greeted = True
        return Reply(Welcome(PROTOCOL_VERSION, os.getpid()))

    def _list_sockets(self, peer: Peer, message: ListSockets) -> Reply:
        return Reply(SocketList(tuple(bound.info() for bound in self.sockets.values())))

    def _get_sockets(self, peer: Peer, message: GetSockets) -> Reply:
        unknown = [name for name in message.names if name not in self.sockets]
        if unknown:
            return self._refuse(peer, "unknown_socket", f"no [socket:{unknown[0]}] in the config")
        chosen = [self.sockets[name] for name in message.names]
        return Reply(Sockets(tuple(b.info() for b in chosen)), [b.fd for b in chosen])

    def _bind_reuseport(self, peer: Peer, message: BindReuseport) -> Reply:
        master = self._reuseport_master(peer, message.name)
        if isinstance(master, Reply):
            return master
        try:
            sibling = bind_reuseport_sibling(master)
        except BindError as exc:
            return self._refuse(peer, "bind_failed", str(exc))
        return Reply(Sockets((sibling.info(),)), [sibling.fd], [sibling])

    def _get_steering(self, peer: Peer, message: GetSteering) -> Reply:
        master = self._reuseport_master(peer, message.name)
        if isinstance(master, Reply):
            return master
        if master.steering is None:
            return self._refuse(
                peer,
                "no_steering",
                f"socket {message.name} has no steering program (the broker's log says why)",
            )
        # The broker's own fds: sent, never closed with the reply.
        return Reply(
            SteeringMaps(message.name), [master.steering.count_map, master.steering.slots_map]
        )

    def _reuseport_master(self, peer: Peer, name: str) -> BoundSocket | Reply:
        """The master of so_reuseport socket ``name``, or the refusal to answer with."""
        master = self.sockets.get(name)
        if master is None:
            return self._refuse(peer, "unknown_socket", f"no [socket:{name}] in the config")
        if not master.spec.so_reuseport:
            return self._refuse(peer, "not_reuseport", f"socket {name} has no so_reuseport")
        return master

    def _reload_config(self, peer: Peer, message: ReloadConfig) -> Reply:
        try:
            return Reply(self._reload())
        except ReloadError as exc:
            return self._refuse(peer, "reload_failed", str(exc))

    def _shutdown_request(self, peer: Peer, message: Shutdown) -> Reply:
        log.info("shutdown_requested", peer=peer.name)
        self._shutdown()
        return Reply(Ok())

    def _ready_request(self, peer: Peer, message: Ready) -> Reply:
        self._ready(peer)
        return Reply(Ok())

    def _reload_done_request(self, peer: Peer, message: ReloadDone) -> Reply:
        self._reload_done(peer, message.ok)
        return Reply(Ok())

    def _hold_pipes(self, peer: Peer, message: HoldPipes) -> Reply:
        try:
            fds = self.held.hold_pipes(message.keys)
        except ProtocolError as exc:
            return self._refuse(peer, exc.code, exc.reason)
        keys = list(dict.fromkeys(message.keys))
        return Reply(Held(tuple((key, PIPE) for key in keys)), fds, discard=fds[1::PIPE])

    def _hold_memfd(self, peer: Peer, message: HoldMemfd) -> Reply:
        try:
            fd = self.held.hold_memfd(message.key)
        except ProtocolError as exc:
            return self._refuse(peer, exc.code, exc.reason)
        return Reply(Held(((message.key, 1),)), [fd])

    def _release(self, peer: Peer, message: Release) -> Reply:
        self.held.release(message.keys)
        return Reply(Ok())

    def _take_held(self, peer: Peer, message: TakeHeld) -> Reply:
        page, more = self.held.page(message.after)
        return Reply(Held(tuple((key, 1) for key, _ in page), more), [fd for _, fd in page])

    def _handover_request(self, peer: Peer, message: Handover) -> Reply:
        self._handover(peer)
        return Reply(Ok())

    _handlers: dict[type, Callable[..., Reply]] = {
        ListSockets: _list_sockets,
        GetSockets: _get_sockets,
        BindReuseport: _bind_reuseport,
        GetSteering: _get_steering,
        ReloadConfig: _reload_config,
        Shutdown: _shutdown_request,
        Ready: _ready_request,
        ReloadDone: _reload_done_request,
        HoldPipes: _hold_pipes,
        HoldMemfd: _hold_memfd,
        Release: _release,
        TakeHeld: _take_held,
        Handover: _handover_request,
    }
