"""Capture the broker's events in a test, as structlog.testing.capture_logs does for structlog."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from chapiteau.broker.event_log import log


class Collector:
    """An output for the event log that keeps each event as a dict."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def msg(self, line: str) -> None:
        event = json.loads(line)
        del event["timestamp"]
        self.events.append(event)


@contextlib.contextmanager
def broker_events(level: str = "debug") -> Iterator[list[dict[str, Any]]]:
    """The events the broker logs inside the block (``event``, ``level`` and fields)."""
    saved = (log.threshold, log.render, log.output)
    collector = Collector()
    log.configure(level, "json", collector)
    try:
        yield collector.events
    finally:
        log.threshold, log.render, log.output = saved
