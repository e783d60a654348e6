"""The broker's event logger: ``log.info("socket_bound", name="web")``, one line per event.

The broker logs the way the supervisor does with structlog (the same processors
from protocol/log_lines.py, the same JSON lines, the same console layout for
people) without importing structlog: structlog brings asyncio, ssl and more, and
the broker, which runs for as long as the sockets live, carries nothing it does
not use (that alone is half its memory). One `EventLog` serves every module
(``from chapiteau.broker.event_log import log``); `configure` sets its level,
format and output once the command line is read. Until then it writes console
lines of level info and above to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys

from chapiteau.protocol.log_lines import LOG_PROCESSORS, exception_text, json_line

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from chapiteau.protocol.log_lines import EventDict

    Renderer = Callable[[Any, str, EventDict], str]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
"""Level names as in the ``--log-level`` option, and their order."""
COLOURS = {"debug": "\x1b[32m", "info": "\x1b[32m", "warning": "\x1b[33m"}
"""Console colours of the level names on a terminal (others: red), as structlog's."""
RESET, BRIGHT, DIM, CYAN, MAGENTA, RED = (
    "\x1b[0m",
    "\x1b[1m",
    "\x1b[2m",
    "\x1b[36m",
    "\x1b[35m",
    "\x1b[31m",
)


def console_line(_logger: Any, _method: str, event_dict: EventDict, colours: bool = False) -> str:
    """``2026-11-30T07:51:00.123456Z [info     ] event    key=value``: structlog's layout."""
    fields = dict(event_dict)
    timestamp = fields.pop("timestamp", "")
    level = fields.pop("level", "")
    event = str(fields.pop("event", ""))
    exc_info = fields.pop("exc_info", None)
    exception = exception_text(exc_info).rstrip() if exc_info else ""
    pairs = [(key, _value(fields[key])) for key in sorted(fields)]
    if not colours:
        body = " ".join(f"{key}={value}" for key, value in pairs)
        line = f"{timestamp} [{level:<9}] {event:<30} {body}".rstrip()
    else:
        colour = COLOURS.get(level, RED)
        body = " ".join(f"{CYAN}{key}{RESET}={MAGENTA}{value}{RESET}" for key, value in pairs)
        line = (
            f"{DIM}{timestamp}{RESET} [{colour}{BRIGHT}{level:<9}{RESET}] "
            f"{BRIGHT}{event:<30}{RESET} {body}"
        ).rstrip()
    return line + ("\n" + exception if exception else "")


def _value(value: object) -> str:
    if isinstance(value, str) and not set(value) & {" ", "\t", "=", "\r", "\n", '"', "'"}:
        return value
    return repr(value)


class StandardError:
    """The default output: stderr, plainly (`configure` puts a never-blocking sink instead)."""

    def msg(self, line: str) -> None:
        """Write one rendered event."""
        with contextlib.suppress(OSError):
            os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))


class EventLog:
    """structlog's bound-logger calls (``info``, ``warning``, ``exception`` …), rendered here."""

    def __init__(self) -> None:
        self.threshold = LEVELS["info"]
        self.render: Renderer = console_line
        self.output: Any = StandardError()
        """Anything with ``msg(line)``: broker/logs.py's LogSink once configured."""

    def configure(self, level: str, fmt: str, output: Any, colours: bool = False) -> None:
        """Log events of ``level`` and above, as ``fmt`` (console or json), to ``output``."""
        self.threshold = LEVELS[level.lower()]
        self.output = output
        if fmt == "json":
            self.render = json_line
        else:
            self.render = lambda logger, method, event_dict: console_line(
                logger, method, event_dict, colours
            )

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        level = LEVELS.get(method, LEVELS["error"])
        if level < self.threshold:
            return
        event_dict: EventDict = {"event": event, **fields}
        for processor in LOG_PROCESSORS:
            event_dict = processor(None, method, event_dict)
        self.output.msg(self.render(None, method, event_dict))

    def debug(self, event: str, **fields: Any) -> None:
        """An event of level debug."""
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """An event of level info."""
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """An event of level warning."""
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """An event of level error."""
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """An event of level critical."""
        self._emit("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error event with the exception being handled (its traceback)."""
        self._emit("error", event, {"exc_info": sys.exc_info()[1] or True, **fields})


log = EventLog()
