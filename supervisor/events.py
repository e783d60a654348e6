"""Publish what happens to watchers: Circus's event topics, to whoever subscribed.

Watchers call ``publish(watcher_name, event, payload)``; subscribers (the ZMQ
PUB endpoint, the log) receive ``(topic, payload)`` with Circus's topic
``watcher.<name lower-cased, spaces as underscores>.<event>``.
chapiteau's own events use topics Circus clients do not subscribe to.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("chapiteau.supervisor")

Subscriber = Callable[[str, dict], None]


def watcher_topic(watcher_name: str, event: str) -> str:
    """Circus's topic for an event of ``watcher_name``."""
    return f"watcher.{watcher_name.lower().replace(' ', '_')}.{event}"


class Events:
    """A fan-out of (topic, payload) pairs; a failing subscriber never stops the others."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.remove(subscriber)

    def publish(self, watcher_name: str, event: str, payload: dict) -> None:
        self.publish_topic(watcher_topic(watcher_name, event), payload)

    def publish_topic(self, topic: str, payload: dict) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(topic, payload)
            except Exception as exc:
                log.error("event_subscriber_failed", topic=topic, error=repr(exc))
