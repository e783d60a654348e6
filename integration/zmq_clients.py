"""Circus-style ZMQ clients for the integration tests: a DEALER for commands, a SUB for events.

They are deliberately written from Circus's protocol, not from chapiteau's own code, so
that the tests check the wire as any Circus client sees it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import zmq

REPLY_TIMEOUT = 20.0


class Control:
    """A Circus-style client: a DEALER with a hex identity, matching replies by id."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.identity = uuid.uuid4().hex.encode()
        self.socket.linger = 0
        self.socket.connect(endpoint)

    def send(self, command: str, **properties: Any) -> str:
        request_id = uuid.uuid4().hex
        message = {"id": request_id, "command": command, "properties": properties}
        self.socket.send(json.dumps(message).encode())
        return request_id

    def receive(self, request_id: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000)):
                raise AssertionError(f"no reply to {request_id} within {timeout}s")
            reply = json.loads(self.socket.recv())
            if reply.get("id") == request_id:
                return reply

    def call(self, command: str, timeout: float = REPLY_TIMEOUT, **properties: Any) -> dict:
        return self.receive(self.send(command, **properties), timeout)

    def close(self) -> None:
        self.socket.close()
        self.context.term()


class Events:
    """A SUB on the pubsub endpoint, subscribed to everything."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.linger = 0
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)

    def until(self, topic: str, timeout: float = REPLY_TIMEOUT) -> list[tuple[str, dict]]:
        """Every event received up to and including the first one on ``topic``."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(100):
                raw_topic, body = self.socket.recv_multipart()
                seen.append((raw_topic.decode(), json.loads(body)))
                if seen[-1][0] == topic:
                    return seen
        raise AssertionError(f"no {topic} event within {timeout}s; saw {seen}")

    def close(self) -> None:
        self.socket.close()
        self.context.term()
