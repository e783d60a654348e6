"""The event endpoint: a ZMQ PUB on ``pubsub_endpoint`` sending every watcher event.

Each event is Circus's 2-frame message ``[topic, json]``, e.g.
``[b"watcher.web.spawn", b'{"process_pid": 1234, "time": 1700000000.0}']``.
A PUB never blocks (slow subscribers lose messages at the high-water mark),
so a plain non-blocking send from the event loop is safe.
"""

from __future__ import annotations

import json

import structlog
import zmq

from chapiteau.supervisor.endpoints.controller import Curve, prepare_endpoint, rebind_endpoint
from chapiteau.supervisor.events import Events

log = structlog.get_logger("chapiteau.supervisor")


class PubSub:
    """Publishes the events of ``events`` on ``endpoint``."""

    def __init__(
        self, endpoint: str, events: Events, context: zmq.Context, curve: Curve | None = None
    ) -> None:
        """``context``: the controller's, whose authenticator then vets subscribers too."""
        self.endpoint = endpoint
        self.events = events
        self.context = context
        self.curve = curve
        self.socket: zmq.Socket | None = None

    def start(self) -> None:
        """Bind and subscribe; raises EndpointError when the endpoint is unusable."""
        sock = zmq.Socket(self.context, zmq.PUB)
        sock.linger = 0
        try:
            prepare_endpoint(sock, self.endpoint, self.curve, "pubsub_endpoint")
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.events.subscribe(self.publish)
        log.info("pubsub_listening", endpoint=self.endpoint)

    def publish(self, topic: str, payload: dict) -> None:
        if self.socket is None:
            return
        try:
            self.socket.send_multipart([topic.encode(), json.dumps(payload).encode()], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("event_dropped", topic=topic)

    def rebind(self, endpoint: str) -> None:
        """Publish on ``endpoint`` from now on; the old one goes after UNBIND_DELAY."""
        if endpoint != self.endpoint and self.socket is not None:
            rebind_endpoint(self.socket, self.endpoint, endpoint, self.curve, "pubsub_endpoint")
            self.endpoint = endpoint

    def close(self) -> None:
        if self.socket is None:
            return
        self.events.unsubscribe(self.publish)
        self.socket.close()
        self.socket = None
