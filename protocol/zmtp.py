"""ZMTP 3 with the NULL mechanism as data and pure functions: greeting, handshake, frames.

Theory of operation (ZeroMQ RFC 23, ZMTP 3.0 with its NULL mechanism, and
RFC 37, ZMTP 3.1). Each peer sends a 64-byte greeting (signature, version 3.x,
mechanism ``NULL``), then a ``READY`` command whose properties name its
socket type, then messages. A message is one or more frames; a frame is a
flags byte (MORE, LONG for an 8-byte size, COMMAND), its size (1 or 8 bytes,
big endian) and its body. A `Connection` is one peer's side of that
conversation: `Connection.send` queues a message, `Connection.receive` takes
whatever bytes the socket produced and returns the events they complete (a
`Ready`, then `Message` events), and `Connection.data_to_send` gives the
bytes to write next. As libzmq does, READY waits for the peer's greeting
(libzmq closes the connection at once on a greeting it refuses, before
saying its own mechanism: `Connection.state` tells how far it went), and
messages wait for the peer's READY (libzmq reads a message that
arrives before it sent its own READY as a bad handshake command).

No I/O here: the socket calls are in `chapiteau.ctl.client`. Two kinds of
errors, as in h11: `ZMTPError` when the peer sent something that is not ZMTP 3
NULL (or an ERROR command), and ordinary exceptions (ValueError) when the
caller misuses this module. Events are NamedTuples, not dataclasses, which
chapiteauctl would pay about 10 ms to import. chapiteauctl speaks it to the control endpoint so
that it need not import pyzmq (a third of its start-up time); CURVE stays
with pyzmq.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
"""The first 10 bytes of every ZMTP 2+ greeting (RFC 23: padding, then 0x7F)."""
GREETING_SIZE = 64
VERSION = (3, 0)
"""What this side announces; a 3.1 peer speaks 3.0 to it."""
NULL = b"NULL"
MORE = 0x01
LONG = 0x02
COMMAND = 0x04
MAX_FRAME_BYTES = 1 << 30
"""A larger frame from the peer is an error (a reply of 10,000 processes' stats is ~10 MiB)."""
SOCKET_TYPES = frozenset({"PAIR", "PUB", "SUB", "REQ", "REP", "DEALER", "ROUTER", "PULL", "PUSH"})
PEERS = {
    "DEALER": frozenset({"DEALER", "ROUTER", "REP"}),
    "ROUTER": frozenset({"DEALER", "ROUTER", "REQ"}),
    "REQ": frozenset({"REP", "ROUTER"}),
    "REP": frozenset({"REQ", "DEALER"}),
}
"""Which socket types may talk to which (RFC 28); types not listed here are not checked."""

_SHORT = struct.Struct("!BB")
_LONG = struct.Struct("!BQ")


class ZMTPError(Exception):
    """The peer sent something that is not ZMTP 3 with the NULL mechanism, or an ERROR."""


class Ready(NamedTuple):
    """The peer's READY command: its metadata (``Socket-Type``, ``Identity`` ...)."""

    properties: dict[str, bytes]


class Message(NamedTuple):
    """One message from the peer, its frames in order."""

    frames: tuple[bytes, ...]


Event = Ready | Message


def greeting(as_server: bool = False) -> bytes:
    """This side's 64-byte greeting: signature, version 3.0, NULL, as-server flag, filler."""
    return (
        SIGNATURE
        + bytes(VERSION)
        + NULL.ljust(20, b"\x00")
        + (b"\x01" if as_server else b"\x00")
        + b"\x00" * 31
    )


def check_greeting(data: bytes) -> None:
    """Raise ZMTPError unless ``data`` (64 bytes) greets in ZMTP 3 with the NULL mechanism."""
    if len(data) != GREETING_SIZE:
        raise ValueError(f"a greeting is {GREETING_SIZE} bytes, not {len(data)}")
    if data[0] != 0xFF or data[9] & 0x01 != 0x01:
        raise ZMTPError("the peer does not speak ZMTP (no greeting signature)")
    if data[10] < 3:
        raise ZMTPError(f"the peer speaks ZMTP {data[10]}.{data[11]}; ZMTP 3 is needed")
    mechanism = data[12:32].rstrip(b"\x00")
    if mechanism != NULL:
        name = mechanism.decode("ascii", "replace")
        raise ZMTPError(f"the peer asks for the {name} mechanism; this side speaks NULL")


def frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    """One frame: flags, size (short up to 255 bytes, else long) and body."""
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    if len(body) <= 0xFF:
        return _SHORT.pack(flags, len(body)) + body
    return _LONG.pack(flags | LONG, len(body)) + body


def message(frames: list[bytes] | tuple[bytes, ...]) -> bytes:
    """A whole message: every frame but the last has MORE."""
    if not frames:
        raise ValueError("a message has at least one frame")
    last = len(frames) - 1
    return b"".join(frame(body, more=index < last) for index, body in enumerate(frames))


def command(name: bytes, data: bytes = b"") -> bytes:
    """A command frame: the name's size, the name, then its data."""
    return frame(bytes([len(name)]) + name + data, command=True)


def properties(values: dict[str, bytes]) -> bytes:
    """READY's metadata: each property's name size (1 byte), name, value size (4), value."""
    return b"".join(
        bytes([len(name)]) + name.encode("ascii") + struct.pack("!I", len(value)) + value
        for name, value in values.items()
    )


def parse_properties(data: bytes) -> dict[str, bytes]:
    """The metadata of a READY command; ZMTPError if it is cut short."""
    found: dict[str, bytes] = {}
    offset = 0
    while offset < len(data):
        size = data[offset]
        name_end = offset + 1 + size
        value_start = name_end + 4
        if size == 0 or value_start > len(data):
            raise ZMTPError("the peer's READY has a truncated property")
        (value_size,) = struct.unpack_from("!I", data, name_end)
        end = value_start + value_size
        if end > len(data):
            raise ZMTPError("the peer's READY has a truncated property value")
        found[data[offset + 1 : name_end].decode("ascii", "replace")] = data[value_start:end]
        offset = end
    return found


def ready(socket_type: str, identity: bytes = b"") -> bytes:
    """The READY command of a socket of ``socket_type`` (with its routing identity, if any)."""
    values = {"Socket-Type": socket_type.encode("ascii")}
    if identity:
        values["Identity"] = identity
    return command(b"READY", properties(values))


class Connection:
    """One side of a ZMTP 3 NULL connection: bytes in, events out; messages in, bytes out.

    States: greeting (until the peer's 64 bytes came), handshake (until its
    READY), ready (messages). The peer's bytes may come in pieces of any size.
    """

    def __init__(self, socket_type: str, identity: bytes = b"", as_server: bool = False) -> None:
        if socket_type not in SOCKET_TYPES:
            raise ValueError(f"unknown ZMTP socket type {socket_type!r}")
        self.socket_type = socket_type
        self.identity = identity
        self.state = "greeting"
        self._buffer = bytearray()
        self._frames: list[bytes] = []
        self._outgoing = bytearray(greeting(as_server))
        self._waiting: list[bytes] = []

    def send(self, frames: list[bytes] | tuple[bytes, ...]) -> None:
        """Queue one message; it goes out once the peer is ready."""
        if self.state == "ready":
            self._outgoing += message(frames)
        else:
            self._waiting.append(message(frames))

    def data_to_send(self) -> bytes:
        """The bytes to write now (possibly none)."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        """The events that ``data`` completes; ZMTPError if the peer broke the protocol."""
        self._buffer += data
        events: list[Event] = []
        if self.state == "greeting":
            if len(self._buffer) < GREETING_SIZE:
                # libzmq sends its signature alone first: refuse a non-ZMTP peer early.
                if self._buffer and self._buffer[0] != 0xFF:
                    raise ZMTPError("the peer does not speak ZMTP (no greeting signature)")
                return events
            check_greeting(bytes(self._buffer[:GREETING_SIZE]))
            del self._buffer[:GREETING_SIZE]
            self.state = "handshake"
            self._outgoing += ready(self.socket_type, self.identity)
        while (parsed := self._next_frame()) is not None:
            flags, body = parsed
            if flags & COMMAND:
                ready_event = self._command(body)
                if ready_event is not None:
                    events.append(ready_event)
                continue
            if self.state != "ready":
                raise ZMTPError("the peer sent a message before its READY")
            self._frames.append(body)
            if not flags & MORE:
                events.append(Message(tuple(self._frames)))
                self._frames = []
        return events

    def _next_frame(self) -> tuple[int, bytes] | None:
        """Take one whole frame off the buffer, or None until it has come."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        flags = buffer[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZMTPError(f"the peer sent a frame with unknown flags {flags:#04x}")
        if flags & LONG:
            if len(buffer) < _LONG.size:
                return None
            _, size = _LONG.unpack_from(buffer)
            start = _LONG.size
        else:
            size = buffer[1]
            start = _SHORT.size
        if size > MAX_FRAME_BYTES:
            raise ZMTPError(f"the peer sent a frame of {size} bytes (limit {MAX_FRAME_BYTES})")
        if len(buffer) < start + size:
            return None
        body = bytes(buffer[start : start + size])
        del buffer[: start + size]
        return flags, body

    def _command(self, body: bytes) -> Ready | None:
        if not body or len(body) < 1 + body[0]:
            raise ZMTPError("the peer sent a truncated command")
        name, data = body[1 : 1 + body[0]], body[1 + body[0] :]
        if name == b"ERROR":
            reason = data[1 : 1 + data[0]] if data else b""
            raise ZMTPError(f"the peer refused the connection: {reason.decode('utf-8', 'replace')}")
        if name != b"READY":
            return None  # PING, SUBSCRIBE ...: nothing this side must answer
        if self.state != "handshake":
            raise ZMTPError("the peer sent READY twice")
        peer = parse_properties(data)
        their_type = peer.get("Socket-Type", b"").decode("ascii", "replace")
        allowed = PEERS.get(self.socket_type)
        if allowed is not None and their_type not in allowed:
            raise ZMTPError(
                f"a {self.socket_type} cannot talk to a {their_type or 'untyped'} socket"
            )
        self.state = "ready"
        self._outgoing += b"".join(self._waiting)
        self._waiting.clear()
        return Ready(peer)
