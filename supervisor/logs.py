"""Configure the supervisor's structured logging (console for people, or JSON lines).

The supervisor writes to the stderr the broker gave it, a pipe whose lines the
broker copies to its own log, so every process of a chapiteau tree logs to the
same place in the same format (protocol/log_lines.py says what a line is).
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.dev import ConsoleRenderer

from chapiteau.protocol.log_lines import LOG_PROCESSORS, json_line


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Send structlog events to stderr, filtered by ``level``, rendered as ``fmt``."""
    renderer = json_line if fmt == "json" else ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*LOG_PROCESSORS, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
