"""The control endpoint: a ZMQ ROUTER speaking Circus's request/reply protocol.

The ROUTER's fd is watched by the event loop directly (no future per
receive): when it signals, every waiting request is taken at once, and each
runs as its own asyncio task, so a slow command (a stop with a long
graceful_timeout) never holds up the socket or the commands behind it.
Replies go back on the envelope the request came with: Circus's DEALER
clients send ``[identity, body]``, and unlike Circus, REQ clients (whose
messages carry an empty delimiter frame) are answered too. A frame that
cannot be parsed is answered with an error, never dropped into a stall.

Security: an ``ipc://`` endpoint is the way to restrict who may send commands
(file permissions; the directory is created 0700, the socket chowned to
``endpoint_owner``). A ``tcp://`` endpoint is open to anyone who can reach it
unless CURVE is configured (``endpoint_curve_secretkey``, see docs/control.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from chapiteau.protocol.circus_messages import (
    MAX_REQUEST_BYTES,
    Request,
    encode,
    parse_request,
)
from chapiteau.supervisor.endpoints.zmq_setup import (
    Curve,
    EndpointError,
    owner_uid,
    prepare_endpoint,
    rebind_endpoint,
)

log = structlog.get_logger("chapiteau.supervisor")

Handler = Callable[[Request, bytes], Awaitable[dict[str, Any] | None]]
"""Runs one request (with its raw frame, for error texts); None means no reply."""

DRAIN_TIMEOUT = 2.0
"""On close, how long replies still being computed may take to go out."""


class Controller:
    """The ROUTER socket on ``[circus] endpoint`` and the tasks answering it."""

    def __init__(
        self,
        endpoint: str,
        handler: Handler,
        owner: str | None = None,
        curve: Curve | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.owner = owner
        self.curve = curve
        self.context = zmq.asyncio.Context()
        self.socket: zmq.Socket | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Bind and start answering; raises EndpointError when the endpoint is unusable."""
        if self.curve is not None and self.curve.clients_dir is not None:
            self._auth = AsyncioAuthenticator(self.context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self.curve.clients_dir)
        sock = zmq.Socket(self.context, zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            prepare_endpoint(sock, self.endpoint, self.curve, "endpoint")
            self._chown(self.endpoint)
        except EndpointError:
            sock.close()
            raise
        self.socket = sock
        asyncio.get_running_loop().add_reader(sock.getsockopt(zmq.FD), self._receive)
        log.info("controller_listening", endpoint=self.endpoint)

    def _chown(self, endpoint: str) -> None:
        if self.owner is None or not endpoint.startswith("ipc://"):
            return
        path = endpoint[len("ipc://") :]
        try:
            os.chown(path, owner_uid(self.owner), -1)
        except OSError as exc:
            # The supervisor is unprivileged: it can give its socket to no one else.
            raise EndpointError(
                f"endpoint_owner = {self.owner}: cannot chown {path}: {exc.strerror}; the "
                "supervisor runs as the service user, so endpoint_owner must be that user"
            ) from None

    def rebind(self, endpoint: str) -> None:
        """Serve on ``endpoint`` from now on; the old one goes after UNBIND_DELAY."""
        if endpoint != self.endpoint and self.socket is not None:
            rebind_endpoint(
                self.socket, self.endpoint, endpoint, self.curve, "endpoint", self._chown
            )
            self.endpoint = endpoint

    async def close(self) -> None:
        """Let replies being computed go out (briefly), then close the socket."""
        if self.socket is not None:
            asyncio.get_running_loop().remove_reader(self.socket.getsockopt(zmq.FD))
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
        if self.socket is not None:
            self.socket.close(linger=int(DRAIN_TIMEOUT * 1000))
            self.socket = None
        if self._auth is not None:
            self._auth.stop()
        self.context.term()

    def _receive(self) -> None:
        """Take every waiting request (the ZMQ fd is edge-triggered: drain it)."""
        sock = self.socket
        while sock is not None and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.error("controller_receive_failed", error=str(exc))
                return
            if len(frames) < 2:
                log.warning("controller_unexpected_message", frames=len(frames))
                continue
            task = asyncio.get_running_loop().create_task(self._answer(frames[:-1], frames[-1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, envelope: list[bytes], body: bytes) -> None:
        parsed = parse_request(body, time.time())
        if isinstance(parsed, Request):
            reply = await self.handler(parsed, body)
        elif len(envelope) > 1:
            # Not the [identity, body] of a DEALER, and the last frame is not a
            # request either: there is nothing meaningful to answer.
            log.warning("controller_unexpected_message", frames=len(envelope) + 1)
            return
        else:
            reply = parsed
        if reply is None or self.socket is None:
            return
        # A REQ client's envelope ends with the empty delimiter and must come
        # back whole; anything else is answered on the identity alone.
        route = envelope if envelope[-1] == b"" else envelope[:1]
        try:
            self.socket.send_multipart([*route, encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("controller_reply_failed", error=str(exc))
        # Sending can consume the fd's edge for requests that arrived meanwhile.
        asyncio.get_running_loop().call_soon(self._receive)
