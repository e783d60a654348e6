"""The broker wire protocol as data: message types, limits, encode and decode.

Theory of operation. The broker and the supervisor talk over one AF_UNIX
SOCK_SEQPACKET connection, so every frame is one datagram and a file
descriptor attached to it cannot drift to another frame. A frame is

    uint32 big-endian N | N bytes of UTF-8 JSON (an object)

with optional fds attached as SCM_RIGHTS. The JSON object always has ``type``
(a message name below) and ``id`` (an integer chosen by the requester and
echoed in the reply). Only three replies carry fds: ``sockets``, exactly one
per socket described, in the same order; ``held``, as many per entry as the
entry announces, in the same order; ``steering``, two (the count map, then
the slots map: protocol/steering_maps.py). No request carries fds: the broker makes
every fd it holds for the supervisor itself (``hold_pipes``, ``hold_memfd``).

Nothing here does I/O: ``encode`` turns a message into bytes, ``decode`` turns
bytes and a count of received fds into a message or raises ``ProtocolError``.
``chapiteau.protocol.channel`` does the sendmsg/recvmsg. docs/broker-protocol.md
is the human description of the same rules.
"""

from __future__ import annotations

import json
import re
import struct

from chapiteau.protocol.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 * 1024
MAX_FDS_PER_MESSAGE = 250  # the kernel's SCM_MAX_FD is 253
MAX_NAME_BYTES = 200
MAX_NAMES_PER_REQUEST = MAX_FDS_PER_MESSAGE
MAX_SOCKETS = MAX_FDS_PER_MESSAGE
"""Socket objects in one ``socket_list`` or ``sockets``: a config has at most this many."""
MAX_REASON_BYTES = 4096
MAX_ID = 2**53
HEADER = struct.Struct(">I")

# \Z, not $: "$" would also match before a trailing newline and let "web\n" through.
NAME_PATTERN = re.compile(r"^[\w.\-]+\Z", re.ASCII)
FAMILIES = ("AF_INET", "AF_INET6", "AF_UNIX")
SOCKET_TYPES = ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_RAW", "SOCK_RDM", "SOCK_SEQPACKET")
ERROR_CODES = (
    "bad_frame",
    "bad_message",
    "unexpected_fds",
    "unsupported_version",
    "not_hello",
    "unknown_socket",
    "not_reuseport",
    "bind_failed",
    "reload_failed",
    "too_many",
    "fds_in_flight",
    "hold_failed",
    "no_steering",
)
STEERING_FDS = 2
"""The fds of a ``steering`` reply: the count map, then the slots map."""
MAX_HELD_PER_REPLY = MAX_FDS_PER_MESSAGE // 2
"""Entries in one ``held`` reply: each carries one fd, or two for a new pipe."""


class ProtocolError(Exception):
    """The peer sent something that breaks the protocol; answer or drop it, then go on."""

    def __init__(self, code: str, reason: str) -> None:
        # The reason often quotes the peer's input: capped, so a log line stays bounded.
        reason = reason[:MAX_REASON_BYTES]
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SocketInfo(Record):
    """What a receiver needs to know about a listening socket besides its fd."""

    __slots__ = (
        "name",
        "family",
        "type",
        "host",
        "port",
        "path",
        "backlog",
        "blocking",
        "reuseport",
        "inode",
    )

    def __init__(
        self,
        name: str,
        family: str,
        type: str,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        backlog: int = 0,
        blocking: bool = False,
        reuseport: bool = False,
        inode: int = 0,
    ) -> None:
        self.name = name
        self.family = family
        self.type = type
        self.host = host
        self.port = port
        self.path = path
        self.backlog = backlog
        self.blocking = blocking
        self.reuseport = reuseport
        self.inode = inode

    def to_json(self) -> dict[str, Any]:
        return self.as_dict()

    @classmethod
    def from_json(cls, obj: Any) -> SocketInfo:
        fields = _require_object(obj, "socket")
        _only(fields, cls.__slots__)
        return cls(
            name=_name(fields.get("name")),
            family=_choice(fields.get("family"), FAMILIES, "family"),
            type=_choice(fields.get("type"), SOCKET_TYPES, "type"),
            host=_optional_str(fields.get("host"), "host"),
            port=_optional_int(fields.get("port"), "port", 0, 65535),
            path=_optional_str(fields.get("path"), "path"),
            backlog=_int(fields.get("backlog"), "backlog", 0, 2**31 - 1),
            blocking=_bool(fields.get("blocking"), "blocking"),
            reuseport=_bool(fields.get("reuseport"), "reuseport"),
            inode=_int(fields.get("inode"), "inode", 0, 2**64 - 1),
        )


class Hello(Record):
    """Supervisor → broker, first message: the protocol versions it speaks."""

    TYPE = "hello"
    __slots__ = ("versions",)

    def __init__(self, versions: tuple[int, ...] = (PROTOCOL_VERSION,)) -> None:
        self.versions = versions


class Welcome(Record):
    """Broker → supervisor: the version chosen, and who the broker is."""

    TYPE = "welcome"
    __slots__ = ("version", "broker_pid")

    def __init__(self, version: int, broker_pid: int) -> None:
        self.version = version
        self.broker_pid = broker_pid


class ListSockets(Record):
    """Supervisor → broker: describe every configured socket (no fds)."""

    TYPE = "list_sockets"
    __slots__ = ()


class SocketList(Record):
    """Broker → supervisor: the configured sockets, no fds attached."""

    TYPE = "socket_list"
    __slots__ = ("sockets",)

    def __init__(self, sockets: tuple[SocketInfo, ...] = ()) -> None:
        self.sockets = sockets


class GetSockets(Record):
    """Supervisor → broker: hand me these listening sockets."""

    TYPE = "get_sockets"
    __slots__ = ("names",)

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.names = names


class BindReuseport(Record):
    """Supervisor → broker: bind one more SO_REUSEPORT socket for this name (one per worker)."""

    TYPE = "bind_reuseport"
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class GetSteering(Record):
    """Supervisor → broker: the steering maps of this ``so_reuseport`` socket."""

    TYPE = "get_steering"
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class SteeringMaps(Record):
    """Broker → supervisor: a socket's two steering maps attached (count, then slots)."""

    TYPE = "steering"
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Sockets(Record):
    """Broker → supervisor: sockets with their fds attached, one fd per entry, same order."""

    TYPE = "sockets"
    __slots__ = ("sockets",)

    def __init__(self, sockets: tuple[SocketInfo, ...] = ()) -> None:
        self.sockets = sockets


class ReloadConfig(Record):
    """Supervisor → broker: re-read the config file and bind what changed."""

    TYPE = "reload_config"
    __slots__ = ()


class Reloaded(Record):
    """Broker → supervisor: the result of a config reload, by socket name."""

    TYPE = "reloaded"
    __slots__ = ("added", "removed", "changed")

    def __init__(
        self,
        added: tuple[str, ...] = (),
        removed: tuple[str, ...] = (),
        changed: tuple[str, ...] = (),
    ) -> None:
        self.added = added
        self.removed = removed
        self.changed = changed


class Shutdown(Record):
    """Supervisor → broker: the operator asked to quit; stop everything."""

    TYPE = "shutdown"
    __slots__ = ()


class Ready(Record):
    """Supervisor → broker: its endpoints are open and it starts the watchers."""

    TYPE = "ready"
    __slots__ = ()


class ReloadDone(Record):
    """Supervisor → broker: the reload a SIGHUP asked for is over (``ok``: every watcher)."""

    TYPE = "reload_done"
    __slots__ = ("ok",)

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok


class HoldPipes(Record):
    """Supervisor → broker: make one pipe per key and keep its read end under that key."""

    TYPE = "hold_pipes"
    __slots__ = ("keys",)

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self.keys = keys


class HoldMemfd(Record):
    """Supervisor → broker: make an empty memfd and keep it under ``key``."""

    TYPE = "hold_memfd"
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class Release(Record):
    """Supervisor → broker: close what is held under these keys (unknown keys are ignored)."""

    TYPE = "release"
    __slots__ = ("keys",)

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self.keys = keys


class TakeHeld(Record):
    """Supervisor → broker: a copy of what is held under the keys after ``after``, in order."""

    TYPE = "take_held"
    __slots__ = ("after",)

    def __init__(self, after: str = "") -> None:
        self.after = after


class Held(Record):
    """Broker → supervisor: (key, fd count) entries with their fds attached, in order.

    The answer to ``hold_pipes`` (two fds a key: the read end, then the write
    end), ``hold_memfd`` (one) and ``take_held`` (one a key, ``more`` when a
    next page starts after the last key).
    """

    TYPE = "held"
    __slots__ = ("entries", "more")

    def __init__(self, entries: tuple[tuple[str, int], ...] = (), more: bool = False) -> None:
        self.entries = entries
        self.more = more


class Handover(Record):
    """Supervisor → broker: I exit for an upgrade; start my successor at once."""

    TYPE = "handover"
    __slots__ = ()


class Ok(Record):
    """Broker → supervisor: done."""

    TYPE = "ok"
    __slots__ = ()


class Error(Record):
    """Either side: the request failed, and why."""

    TYPE = "error"
    __slots__ = ("code", "reason")

    def __init__(self, code: str, reason: str = "") -> None:
        self.code = code
        # Reasons quote config files, peers and OS errors; capped here, where every
        # Error is built, no reply can break the limit its receiver enforces.
        self.reason = reason[:MAX_REASON_BYTES]


Message = (
    Hello
    | Welcome
    | ListSockets
    | SocketList
    | GetSockets
    | BindReuseport
    | GetSteering
    | SteeringMaps
    | Sockets
    | ReloadConfig
    | Reloaded
    | Shutdown
    | Ready
    | ReloadDone
    | HoldPipes
    | HoldMemfd
    | Release
    | TakeHeld
    | Held
    | Handover
    | Ok
    | Error
)

MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        ListSockets,
        SocketList,
        GetSockets,
        BindReuseport,
        GetSteering,
        SteeringMaps,
        Sockets,
        ReloadConfig,
        Reloaded,
        Shutdown,
        Ready,
        ReloadDone,
        HoldPipes,
        HoldMemfd,
        Release,
        TakeHeld,
        Held,
        Handover,
        Ok,
        Error,
    )
}


def fd_count(message: Message) -> int:
    """How many fds must travel with this message."""
    if isinstance(message, Sockets):
        return len(message.sockets)
    if isinstance(message, Held):
        return sum(count for _, count in message.entries)
    if isinstance(message, SteeringMaps):
        return STEERING_FDS
    return 0


def encode(message: Message, request_id: int) -> bytes:
    """Serialize a message into one frame (the caller attaches ``fd_count(message)`` fds)."""
    if not 0 <= request_id <= MAX_ID:
        raise ValueError(f"request id out of range: {request_id}")
    body = {"type": message.TYPE, "id": request_id, **_fields_to_json(message)}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if HEADER.size + len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"{message.TYPE} frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    if fd_count(message) > MAX_FDS_PER_MESSAGE:
        raise ValueError(f"{message.TYPE} carries more than {MAX_FDS_PER_MESSAGE} fds")
    return HEADER.pack(len(payload)) + payload


def decode(frame: bytes, nfds: int = 0) -> tuple[int, Message]:
    """Parse one frame received with ``nfds`` attached fds into (request id, message).

    Raises ProtocolError for anything malformed; the caller owns (and must
    close) the received fds in that case.
    """
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("bad_frame", f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    if len(frame) < HEADER.size:
        raise ProtocolError("bad_frame", f"frame of {len(frame)} bytes is shorter than its header")
    (length,) = HEADER.unpack_from(frame)
    if length != len(frame) - HEADER.size:
        raise ProtocolError(
            "bad_frame", f"header announces {length} bytes, frame holds {len(frame) - HEADER.size}"
        )
    try:
        body = json.loads(frame[HEADER.size :].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers too long to convert;
        # RecursionError is deeply nested arrays or objects.
        raise ProtocolError("bad_frame", f"payload is not UTF-8 JSON: {exc}") from None
    fields = _require_object(body, "frame")
    request_id = _int(fields.pop("id", None), "id", 0, MAX_ID)
    kind = fields.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("bad_message", f"unknown message type {kind!r}")
    message = _PARSERS[cls](fields)
    expected = fd_count(message)
    if nfds != expected:
        raise ProtocolError(
            "unexpected_fds", f"{kind} arrived with {nfds} fds, expected {expected}"
        )
    return request_id, message


def _fields_to_json(message: Message) -> dict[str, Any]:
    return {key: _to_json(value) for key, value in message.as_dict().items()}


def _to_json(value: Any) -> Any:
    if isinstance(value, SocketInfo):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    return value


def _no_fields(cls: type) -> Any:
    def parse(fields: dict[str, Any]) -> Message:
        _only(fields, ())
        return cls()

    return parse


def _parse_hello(fields: dict[str, Any]) -> Hello:
    _only(fields, ("versions",))
    versions = _list(fields.get("versions"), "versions", 16)
    return Hello(tuple(_int(v, "versions", 0, 2**31 - 1) for v in versions))


def _parse_welcome(fields: dict[str, Any]) -> Welcome:
    _only(fields, ("version", "broker_pid"))
    return Welcome(
        _int(fields.get("version"), "version", 0, 2**31 - 1),
        _int(fields.get("broker_pid"), "broker_pid", 1, 2**31 - 1),
    )


def _parse_socket_list(cls: type) -> Any:
    def parse(fields: dict[str, Any]) -> Message:
        _only(fields, ("sockets",))
        items = _list(fields.get("sockets"), "sockets", MAX_SOCKETS)
        return cls(tuple(SocketInfo.from_json(item) for item in items))

    return parse


def _parse_get_sockets(fields: dict[str, Any]) -> GetSockets:
    _only(fields, ("names",))
    names = _list(fields.get("names"), "names", MAX_NAMES_PER_REQUEST)
    return GetSockets(tuple(_name(name) for name in names))


def _parse_named(cls: type) -> Any:
    def parse(fields: dict[str, Any]) -> Message:
        _only(fields, ("name",))
        return cls(_name(fields.get("name")))

    return parse


def _parse_reloaded(fields: dict[str, Any]) -> Reloaded:
    _only(fields, ("added", "removed", "changed"))
    return Reloaded(
        *(
            tuple(_name(n) for n in _list(fields.get(key), key, MAX_NAMES_PER_REQUEST))
            for key in ("added", "removed", "changed")
        )
    )


def _parse_keys(cls: type) -> Any:
    def parse(fields: dict[str, Any]) -> Message:
        _only(fields, ("keys",))
        keys = _list(fields.get("keys"), "keys", MAX_HELD_PER_REPLY)
        return cls(tuple(_name(key) for key in keys))

    return parse


def _parse_hold_memfd(fields: dict[str, Any]) -> HoldMemfd:
    _only(fields, ("key",))
    return HoldMemfd(_name(fields.get("key")))


def _parse_take_held(fields: dict[str, Any]) -> TakeHeld:
    _only(fields, ("after",))
    after = fields.get("after", "")
    return TakeHeld(after if after == "" else _name(after))


def _parse_held(fields: dict[str, Any]) -> Held:
    _only(fields, ("entries", "more"))
    entries = []
    for entry in _list(fields.get("entries"), "entries", MAX_HELD_PER_REPLY):
        if not isinstance(entry, list) or len(entry) != 2:
            raise ProtocolError("bad_message", "a held entry is [key, fd count]")
        entries.append((_name(entry[0]), _int(entry[1], "fd count", 1, 2)))
    return Held(tuple(entries), _bool(fields.get("more", False), "more"))


def _parse_error(fields: dict[str, Any]) -> Error:
    _only(fields, ("code", "reason"))
    reason = fields.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_BYTES:
        raise ProtocolError("bad_message", "error reason must be a string of bounded size")
    return Error(_choice(fields.get("code"), ERROR_CODES, "code"), reason)


def _parse_reload_done(fields: dict[str, Any]) -> ReloadDone:
    _only(fields, ("ok",))
    return ReloadDone(_bool(fields.get("ok"), "ok"))


_PARSERS: dict[type, Any] = {
    Hello: _parse_hello,
    Welcome: _parse_welcome,
    ListSockets: _no_fields(ListSockets),
    SocketList: _parse_socket_list(SocketList),
    GetSockets: _parse_get_sockets,
    BindReuseport: _parse_named(BindReuseport),
    GetSteering: _parse_named(GetSteering),
    SteeringMaps: _parse_named(SteeringMaps),
    Sockets: _parse_socket_list(Sockets),
    ReloadConfig: _no_fields(ReloadConfig),
    Reloaded: _parse_reloaded,
    Shutdown: _no_fields(Shutdown),
    Ready: _no_fields(Ready),
    ReloadDone: _parse_reload_done,
    HoldPipes: _parse_keys(HoldPipes),
    HoldMemfd: _parse_hold_memfd,
    Release: _parse_keys(Release),
    TakeHeld: _parse_take_held,
    Held: _parse_held,
    Handover: _no_fields(Handover),
    Ok: _no_fields(Ok),
    Error: _parse_error,
}


def _require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", f"{what} must be a JSON object")
    return dict(value)


def _only(fields: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(fields) - set(allowed))
    if extra:
        raise ProtocolError("bad_message", f"unexpected field {extra[0]!r}")


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError("bad_message", f"{what} must be a list")
    if len(value) > limit:
        raise ProtocolError("too_many", f"{what} holds {len(value)} entries, limit {limit}")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError("bad_message", f"{what} must be an integer in [{low}, {high}]")
    return value


def _optional_int(value: Any, what: str, low: int, high: int) -> int | None:
    return None if value is None else _int(value, what, low, high)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError("bad_message", f"{what} must be a boolean")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise ProtocolError("bad_message", f"{what} must be a string of at most 4096 characters")
    return value


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ProtocolError("bad_message", f"{what} must be one of {', '.join(choices)}")
    return value


def _name(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME_BYTES
        or not NAME_PATTERN.match(value)
    ):
        raise ProtocolError(
            "bad_message",
            f"a name is 1 to {MAX_NAME_BYTES} characters of letters, digits, '_', '.', '-'",
        )
    return value
