"""Circus's control-channel messages as data: parse a request frame, build a reply.

Theory of operation (Circus's protocol). A request is one JSON object,
``{"id": any, "command": str, "properties": {...}, "msg_type": "cast"}``.
`parse_request` turns one frame's bytes into a `Request`, or, when the peer
sent garbage, into the error reply to send back: it never raises, so a
malformed frame can never stall the server (Circus stalls on an empty body,
a non-object or a missing ``command``). `ok` and `error`
build reply dicts with Circus's key order; `encode` turns a request or a
reply into the frame's bytes exactly as Circus's ``jsonapi.dumps`` does. The
option type tables say which JSON type each ``add``/``set`` option takes. No
I/O here: the supervisor's controller and the command-line client both use
this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

INVALID_JSON = 1
UNKNOWN_COMMAND = 2
MESSAGE_ERROR = 3
OS_ERROR = 4
COMMAND_ERROR = 5
BAD_MSG_DATA_ERROR = 6

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Larger frames are refused by the transport; no command needs more than a few KiB."""

# The hooks a watcher may have: shared by the daemon, which loads
# them, and the CLI, which checks `set NAME hooks ...` before sending it.
HOOK_NAMES = (
    "before_start",
    "after_start",
    "before_stop",
    "after_stop",
    "before_spawn",
    "after_spawn",
    "before_signal",
    "after_signal",
    "before_reap",
    "after_reap",
    "extended_stats",
)

# The JSON type of each watcher option ``add`` and ``set`` take (Circus's
# validate_option): the daemon checks values against these,
# the CLI converts ``set NAME KEY VALUE`` words to them.
INT_OPTIONS = frozenset({"numprocesses", "max_retry", "max_age", "max_age_variance", "priority"})
NUMBER_OPTIONS = frozenset({"warmup_delay", "retry_in", "graceful_timeout"})
BOOL_OPTIONS = frozenset(
    {
        "send_hup",
        "shell",
        "copy_env",
        "respawn",
        "stop_children",
        "singleton",
        "close_child_stdin",
        "close_child_stdout",
        "close_child_stderr",
        "autostart",
        "use_sockets",
    }
)
STRING_OPTIONS = frozenset({"working_dir", "cmd"})


@dataclass(frozen=True)
class Request:
    """One well-formed control request."""

    id: Any
    """Echoed verbatim in the reply; any JSON value, None when absent."""
    command: str
    """Lower-cased, as Circus looks commands up."""
    properties: dict[str, Any] = field(default_factory=dict)
    cast: bool = False
    """``msg_type: "cast"``: run the command, send no reply."""

    @property
    def waiting(self) -> bool:
        """Reply only when the work is done (``properties.waiting``, as in Circus)."""
        return bool(self.properties.get("waiting", False))


def parse_request(body: bytes) -> Request | dict[str, Any]:
    """Return the `Request` in ``body``, or the error reply for a malformed one."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return error("json invalid", INVALID_JSON)
    if not isinstance(message, dict):
        return error("message invalid: not a JSON object", MESSAGE_ERROR)
    request_id = message.get("id")
    command = message.get("command")
    if command is None:
        return error("message invalid 'command' is missing", MESSAGE_ERROR, request_id)
    if not isinstance(command, str):
        return error("message invalid 'command' is not a string", MESSAGE_ERROR, request_id)
    properties = message.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        return error("message invalid 'properties' is not an object", MESSAGE_ERROR, request_id)
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


def ok(fields: dict[str, Any] | None = None, request_id: Any = None) -> dict[str, Any]:
    """A success reply: ``status``, ``time``, the command's fields, then ``id``.

    A field named ``status`` replaces ``"ok"`` in place, as in Circus, where
    ``status NAME`` answers ``{"status": "active", ...}``.
    """
    reply: dict[str, Any] = {"status": "ok", "time": time.time()}
    reply.update(fields or {})
    reply["id"] = request_id
    return reply


def error(reason: str, errno: int, request_id: Any = None, tb: str | None = None) -> dict[str, Any]:
    """An error reply with Circus's keys, in Circus's order."""
    return {
        "status": "error",
        "reason": reason,
        "tb": tb,
        "time": time.time(),
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
