"""Ask the broker for sockets: the supervisor's side of the broker channel.

Requests are synchronous with a short timeout: the broker answers from memory
in microseconds, and a broker that does not answer is a fatal condition for
the supervisor anyway. Received fds are close-on-exec; the spawner places the
ones a worker declares where that worker expects them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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
    SocketInfo,
    SocketList,
    Sockets,
    SteeringMaps,
    TakeHeld,
    Welcome,
)
from chapiteau.protocol.channel import close_fds, receive, send

TIMEOUT = 10.0


class BrokerError(Exception):
    """The broker refused a request or the channel broke; the message says which."""


@dataclass(frozen=True)
class ReceivedSocket:
    """A listening socket handed over by the broker: its fd here and its description."""

    fd: int
    info: SocketInfo


class BrokerClient:
    """One connection to the broker, greeted, with numbered requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self.sock.settimeout(TIMEOUT)
        self._next_id = 0
        welcome = self._call(Hello((PROTOCOL_VERSION,)), Welcome)
        self.broker_pid = welcome.broker_pid

    @classmethod
    def from_fd(cls, fd: int) -> BrokerClient:
        """Use the channel the broker passed us (``--broker-fd`` / CHAPITEAU_BROKER_FD)."""
        os.set_inheritable(fd, False)
        return cls(socket.socket(fileno=fd))

    @classmethod
    def connect(cls, path: str) -> BrokerClient:
        """Connect to a broker listening on ``path`` (connect mode)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise BrokerError(f"cannot connect to the broker at {path}: {reason}") from None
        return cls(sock)

    def list_sockets(self) -> tuple[SocketInfo, ...]:
        return self._call(ListSockets(), SocketList).sockets

    def get_sockets(self, names: list[str]) -> dict[str, ReceivedSocket]:
        """The named listening sockets, by name."""
        if not names:
            return {}
        request = GetSockets(tuple(names))
        reply, fds = self._request(request, Sockets)
        _check_count(request, reply, fds, len(names))
        return {
            info.name: ReceivedSocket(fd, info) for info, fd in zip(reply.sockets, fds, strict=True)
        }

    def bind_reuseport(self, name: str) -> ReceivedSocket:
        """A fresh SO_REUSEPORT socket on ``name``'s address, for one worker."""
        request = BindReuseport(name)
        reply, fds = self._request(request, Sockets)
        _check_count(request, reply, fds, 1)
        return ReceivedSocket(fds[0], reply.sockets[0])

    def get_steering(self, name: str) -> tuple[int, int]:
        """The steering maps of so_reuseport socket ``name``: (count map fd, slots map fd).

        BrokerError when the broker has none for it (``no_steering``: it could
        not load the program; its log says why).
        """
        reply, fds = self._request(GetSteering(name), SteeringMaps)
        if reply.name != name or len(fds) != 2:
            close_fds(fds)
            raise BrokerError(f"broker answered get_steering with {len(fds)} fds for {reply.name}")
        return fds[0], fds[1]

    def reload_config(self) -> Reloaded:
        return self._call(ReloadConfig(), Reloaded)

    def shutdown(self) -> None:
        self._call(Shutdown(), Ok)

    def ready(self) -> None:
        """Tell the broker that start-up is done: from now on a crash is restarted."""
        self._call(Ready(), Ok)

    def reload_done(self, ok: bool) -> None:
        """Tell the broker that the reload a SIGHUP started is over (systemd waits for it)."""
        self._call(ReloadDone(ok), Ok)

    def hold_pipes(self, keys: list[str]) -> list[tuple[int, int]]:
        """A new pipe per key, whose read end the broker keeps: (read, write) per key."""
        reply, fds = self._request(HoldPipes(tuple(keys)), Held)
        if [key for key, _ in reply.entries] != keys or len(fds) != 2 * len(keys):
            close_fds(fds)
            raise BrokerError(f"broker answered hold_pipes with {len(fds)} fds for {len(keys)}")
        return list(zip(fds[::2], fds[1::2], strict=True))

    def hold_memfd(self, key: str) -> int:
        """A new empty memfd that the broker keeps under ``key``."""
        _, fds = self._request(HoldMemfd(key), Held)
        if len(fds) != 1:
            close_fds(fds)
            raise BrokerError(f"broker answered hold_memfd with {len(fds)} fds")
        return fds[0]

    def release(self, keys: tuple[str, ...]) -> None:
        self._call(Release(keys), Ok)

    def take_held(self) -> dict[str, int]:
        """A copy of everything the broker holds, by key (every page)."""
        held: dict[str, int] = {}
        after = ""
        while True:
            reply, fds = self._request(TakeHeld(after), Held)
            if any(count != 1 for _, count in reply.entries) or len(fds) != len(reply.entries):
                close_fds([*fds, *held.values()])
                raise BrokerError("broker answered take_held with a malformed page")
            held.update((key, fd) for (key, _), fd in zip(reply.entries, fds, strict=True))
            if not reply.more or not reply.entries:
                return held
            after = reply.entries[-1][0]

    def handover(self) -> None:
        """Tell the broker this supervisor exits for an upgrade: no backoff for the next."""
        self._call(Handover(), Ok)

    def close(self) -> None:
        self.sock.close()

    def _call(self, request: Message, expected: type) -> Message:
        reply, fds = self._request(request, expected)
        close_fds(fds)
        return reply

    def _request(self, request: Message, expected: type) -> tuple:
        self._next_id += 1
        try:
            send(self.sock, request, self._next_id)
            received = receive(self.sock)
        except (OSError, ProtocolError) as exc:
            raise BrokerError(f"broker channel failed during {request.TYPE}: {exc}") from None
        if received is None:
            raise BrokerError(f"the broker closed the channel during {request.TYPE}")
        if received.request_id != self._next_id:
            close_fds(received.fds)
            raise BrokerError(f"broker answered request {received.request_id}, not {self._next_id}")
        if isinstance(received.message, Error):
            raise BrokerError(f"broker refused {request.TYPE}: {received.message.reason}")
        if not isinstance(received.message, expected):
            close_fds(received.fds)
            raise BrokerError(f"broker answered {request.TYPE} with {received.message.TYPE}")
        return received.message, list(received.fds)


def _check_count(request: Message, reply: Sockets, fds: list[int], wanted: int) -> None:
    """One description and one fd per requested socket, or BrokerError (fds closed)."""
    if len(reply.sockets) != wanted or len(fds) != wanted:
        close_fds(fds)
        raise BrokerError(
            f"broker answered {request.TYPE} with {len(reply.sockets)} sockets and "
            f"{len(fds)} fds, not {wanted}"
        )
