"""Circus's control-channel messages as data: parse a request frame, build a reply.

Theory of operation (Circus's protocol). A request is one JSON object,
``{"id": any, "command": str, "properties": {...}, "msg_type": "cast"}``.
`parse_request` turns one frame's bytes into a `Request`, or, when the peer
sent garbage, into the error reply to send back: it never raises, so a
malformed frame can never stall the server (Circus stalls on an empty body,
a non-object or a missing ``command``). `ok` and `error`
build reply dicts with Circus's key order; `encode` turns a request or a
reply into the frame's bytes exactly as Circus's ``jsonapi.dumps`` does (the
JSON type of each ``add``/``set`` option is in `chapiteau.protocol.options`). No
I/O here, not even the clock: a reply's ``time`` is the ``now`` its caller
passes. The supervisor's controller and the command-line client both use
this module; `Request` is a NamedTuple, not a dataclass, so that the client
does not pay for importing dataclasses (about 10 ms of each command).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

INVALID_JSON = 1
UNKNOWN_COMMAND = 2
MESSAGE_ERROR = 3
OS_ERROR = 4
COMMAND_ERROR = 5
BAD_MSG_DATA_ERROR = 6

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Larger frames are refused by the transport; no command needs more than a few KiB."""


class Request(NamedTuple):
    """One well-formed control request."""

    id: Any
    """Echoed verbatim in the reply; any JSON value, None when absent."""
    command: str
    """Lower-cased, as Circus looks commands up."""
    properties: dict[str, Any]
    cast: bool = False
    """``msg_type: "cast"``: run the command, send no reply."""

    @property
    def waiting(self) -> bool:
        """Reply only when the work is done (``properties.waiting``, as in Circus)."""
        return bool(self.properties.get("waiting", False))


def parse_request(body: bytes, now: float) -> Request | dict[str, Any]:
    """The `Request` in ``body``, or the error reply (at time ``now``) for a malformed one."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return error("json invalid", INVALID_JSON, now=now)
    if not isinstance(message, dict):
        return error("message invalid: not a JSON object", MESSAGE_ERROR, now=now)
    request_id = message.get("id")
    command = message.get("command")
    if command is None:
        return error("message invalid 'command' is missing", MESSAGE_ERROR, request_id, now=now)
    if not isinstance(command, str):
        reason = "message invalid 'command' is not a string"
        return error(reason, MESSAGE_ERROR, request_id, now=now)
    properties = message.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        reason = "message invalid 'properties' is not an object"
        return error(reason, MESSAGE_ERROR, request_id, now=now)
    return Request(
        id=request_id,
        command=command.lower(),
        properties=properties,
        cast=message.get("msg_type") == "cast",
    )


def make_request(
    command: str,
    properties: dict[str, Any] | None = None,
    request_id: Any = None,
    cast: bool = False,
) -> dict[str, Any]:
    """A request object as Circus's clients send it (``circus.commands.make_message``)."""
    message: dict[str, Any] = {"id": request_id, "command": command, "properties": properties or {}}
    if cast:
        message["msg_type"] = "cast"
    return message


def ok(fields: dict[str, Any] | None, request_id: Any, *, now: float) -> dict[str, Any]:
    """A success reply at time ``now``: ``status``, ``time``, the command's fields, then ``id``.

    A field named ``status`` replaces ``"ok"`` in place, as in Circus, where
    ``status NAME`` answers ``{"status": "active", ...}``.
    """
    reply: dict[str, Any] = {"status": "ok", "time": now}
    reply.update(fields or {})
    reply["id"] = request_id
    return reply


def error(
    reason: str, errno: int, request_id: Any = None, tb: str | None = None, *, now: float
) -> dict[str, Any]:
    """An error reply at time ``now``, with Circus's keys, in Circus's order."""
    return {
        "status": "error",
        "reason": reason,
        "tb": tb,
        "time": now,
        "errno": errno,
        "id": request_id,
    }


def encode(message: dict[str, Any]) -> bytes:
    """A request or reply frame: stdlib JSON, default separators, ASCII only, as Circus sends."""
    return json.dumps(message).encode()


def decode_reply(body: bytes) -> dict[str, Any]:
    """Parse a reply frame; ValueError if it is not a JSON object."""
    reply = json.loads(body)
    if not isinstance(reply, dict):
        raise ValueError(f"a reply must be a JSON object, not {type(reply).__name__}")
    return reply
