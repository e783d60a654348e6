"""What a chapiteau log line is, shared by the broker and the supervisor: pure functions.

Every process of a chapiteau tree logs the same way: one event a line, with
``timestamp`` (RFC 3339, UTC, microseconds, ``Z``), ``level`` and ``event``,
then the event's fields. ``LOG_PROCESSORS`` are structlog processors written
against its documented protocol (``(logger, method_name, event_dict) ->
event_dict``) without importing it, so that protocol/ stays standard-library
only; the broker and the supervisor append their renderer (``json_line``, or
structlog's console renderer for people). ``fatal_line`` renders the error a
process exits with before (or instead of) configuring structlog, in the same
format. ``as_json_event`` is how the broker keeps its JSON log JSON when a
line it relays is not.
"""

from __future__ import annotations

import json
import time

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from typing import Any

    EventDict = MutableMapping[str, Any]
    Processor = Callable[[Any, str, EventDict], Any]

LOG_FORMATS = ("console", "json")


def utc_timestamp(now_ns: int | None = None) -> str:
    """``now_ns`` (nanoseconds since the epoch, default: now) as RFC 3339 in UTC, to the µs.

    2026-11-30T07:51:00.123456Z. With ``time``, not ``datetime``: the broker
    keeps every module it imports for its whole life, and datetime's pure-Python
    half is a quarter MiB of it.
    """
    seconds, nanoseconds = divmod(time.time_ns() if now_ns is None else now_ns, 10**9)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanoseconds // 1000:06d}Z"


def add_timestamp(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: ``timestamp`` first, in UTC."""
    event_dict["timestamp"] = utc_timestamp()
    return event_dict


LEVEL_ALIASES = {"warn": "warning", "exception": "error"}


def add_level(_logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """Processor: ``level`` from the method called (``warn`` is ``warning``, as in structlog)."""
    event_dict["level"] = LEVEL_ALIASES.get(method, method)
    return event_dict


def json_line(_logger: Any, _method: str, event_dict: EventDict) -> str:
    """Renderer: the event as one JSON object, timestamp, level and event first.

    ``log.exception`` (``exc_info``) gives the traceback as ``exception``, one string.
    """
    ordered = {key: event_dict[key] for key in ("timestamp", "level", "event") if key in event_dict}
    ordered.update(event_dict)
    exc_info = ordered.pop("exc_info", None)
    if exc_info:
        ordered["exception"] = exception_text(exc_info)
    return json.dumps(ordered, default=repr, ensure_ascii=False)


def exception_text(exc_info: object) -> str:
    """The traceback ``exc_info`` stands for: that exception's, or (``True``) the one handled."""
    # Imported only for the rare exception: traceback brings linecache and tokenize.
    import traceback

    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    return traceback.format_exc()


LOG_PROCESSORS: tuple[Processor, ...] = (add_level, add_timestamp)


def fatal_line(program: str, fmt: str, message: str) -> str:
    """The last line of a process that exits on ``message``, in the log format ``fmt``."""
    if fmt != "json":
        return f"{program}: {message}"
    event = {"event": "fatal_error", "logger": program, "error": message}
    return json_line(None, "", add_timestamp(None, "", add_level(None, "critical", event)))


def as_json_event(line: str, event: str, **fields: Any) -> str:
    """``line`` unchanged when it is one JSON object, else an ``event`` carrying it as ``line``."""
    if line.startswith("{"):
        try:
            if isinstance(json.loads(line), dict):
                return line
        except (ValueError, RecursionError):
            pass
    fields.update(event=event, line=line)
    return json_line(None, "", add_timestamp(None, "", add_level(None, "info", fields)))
