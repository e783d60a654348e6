"""Send and receive broker protocol frames, with their fds, on a SEQPACKET socket.

The only module of the protocol that touches a socket; the broker and the
supervisor share it so that both sides frame, limit and clean up the same way.
Received fds are always close-on-exec (MSG_CMSG_CLOEXEC), and when a frame is
rejected every fd that came with it is closed before the error propagates, so
a misbehaving peer can never make us leak a descriptor. The broker's end goes
further: it refuses fds outright (``refuse_fds``), because closing an fd a
peer chose can block (a TCP socket with SO_LINGER and unsent data, a file on
a FUSE mount its owner does not answer).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
from collections.abc import Sequence

from chapiteau.protocol.broker_messages import (
    MAX_FDS_PER_MESSAGE,
    MAX_FRAME_BYTES,
    Message,
    ProtocolError,
    decode,
    encode,
    fd_count,
)
from chapiteau.protocol.records import Record

SO_PASSRIGHTS: int | None = getattr(
    socket, "SO_PASSRIGHTS", None if os.uname().machine.startswith(("parisc", "sparc")) else 83
)
"""Linux 6.16's socket option: 83 (asm-generic), unknown here for parisc and sparc, whose
socket options are numbered apart; Python 3.11 does not name it."""


class Received(Record):
    """One decoded frame: the request id, the message and the fds that came with it."""

    __slots__ = ("request_id", "message", "fds")

    def __init__(self, request_id: int, message: Message, fds: tuple[int, ...] = ()) -> None:
        self.request_id = request_id
        self.message = message
        self.fds = fds


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of SEQPACKET sockets, both close-on-exec: (broker's end, peer's end).

    The broker's end refuses fds (``refuse_fds``) from the start, before the
    other end is handed to anyone.
    """
    broker_end, peer_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    refuse_fds(broker_end)
    return broker_end, peer_end


def refuse_fds(sock: socket.socket) -> None:
    """Make the kernel refuse any fd sent to ``sock``: the sender's sendmsg fails with EPERM.

    SO_PASSRIGHTS off (Linux 6.16 and later); a listening socket passes it on
    to every connection it accepts, including frames queued before accept().
    An older kernel lacks the option (ENOPROTOOPT): fds still arrive there,
    and are closed on receipt.
    """
    if SO_PASSRIGHTS is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise


def send(sock: socket.socket, message: Message, request_id: int, fds: Sequence[int] = ()) -> None:
    """Send one frame; ``fds`` must match what the message announces."""
    if len(fds) != fd_count(message):
        raise ValueError(f"{message.TYPE} needs {fd_count(message)} fds, got {len(fds)}")
    frame = encode(message, request_id)
    if fds:
        socket.send_fds(sock, [frame], list(fds))
    else:
        sock.send(frame)


def receive(sock: socket.socket) -> Received | None:
    """Receive one frame; None when the peer closed the connection.

    Raises ProtocolError for a truncated, oversized or malformed frame (its fds
    already closed), and OSError for socket errors (BlockingIOError included).
    """
    data, fds, flags = _recvmsg(sock)
    try:
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("bad_frame", "control data truncated (too many fds attached)")
        if flags & socket.MSG_TRUNC or len(data) > MAX_FRAME_BYTES:
            raise ProtocolError("bad_frame", f"frame larger than {MAX_FRAME_BYTES} bytes")
        if not data:
            if fds:
                raise ProtocolError("unexpected_fds", "fds sent without a frame")
            return None
        request_id, message = decode(data, len(fds))
    except ProtocolError:
        close_fds(fds)
        raise
    return Received(request_id, message, tuple(fds))


def _recvmsg(sock: socket.socket) -> tuple[bytes, list[int], int]:
    # Not socket.recv_fds: on Python 3.11 it drops its flags argument, so the
    # fds would arrive without close-on-exec and leak into every exec'd child.
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(
        MAX_FRAME_BYTES + 1,
        socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * fds.itemsize),
        socket.MSG_CMSG_CLOEXEC,
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
