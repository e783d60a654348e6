"""The dashboard's link to the supervisor: control requests and the pubsub stream, over asyncio.

One DEALER for requests (matched on their id, as `chapiteau.ctl.client` does) and
one SUB per browser following the event stream.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from chapiteau.protocol.circus_messages import decode_reply, encode, make_request


class SupervisorError(Exception):
    """The supervisor did not answer in time, or answered with an error."""


class SupervisorLink:
    """Requests to the control endpoint and subscriptions to the pubsub endpoint."""

    def __init__(self, endpoint: str, pubsub_endpoint: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.pubsub_endpoint = pubsub_endpoint
        self.timeout = timeout
        self._context = zmq.asyncio.Context()
        self._lock = asyncio.Lock()
        self._socket: zmq.asyncio.Socket | None = None

    async def call(self, command: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its reply; `SupervisorError` if it fails."""
        async with self._lock:
            if self._socket is None:
                self._socket = self._context.socket(zmq.DEALER)
                self._socket.linger = 0
                self._socket.connect(self.endpoint)
            request_id = os.urandom(16).hex()
            await self._socket.send(encode(make_request(command, properties or {}, request_id)))
            try:
                async with asyncio.timeout(self.timeout):
                    while True:
                        reply = decode_reply(await self._socket.recv())
                        if reply.get("id") == request_id:
                            break
            except TimeoutError:
                # A late reply must not be read as the next request's: start afresh.
                self._socket.close(linger=0)
                self._socket = None
                raise SupervisorError(f"{self.endpoint}: no reply to {command!r}") from None
        if reply.get("status") == "error":
            raise SupervisorError(str(reply.get("reason", "error")))
        return reply

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every event published on the pubsub endpoint, as (topic, body), until cancelled."""
        sub = self._context.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(b"")
        sub.connect(self.pubsub_endpoint)
        try:
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    body = json.loads(frames[1])
                except ValueError:
                    continue
                yield frames[0].decode("utf-8", "replace"), body
        finally:
            sub.close(linger=0)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._context.term()
