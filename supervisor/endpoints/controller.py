"""The control endpoint: a ZMQ ROUTER speaking Circus's request/reply protocol.

The ROUTER's fd is watched by the event loop directly (no future per
receive): when it signals, every waiting request is taken at once. Each
request's coroutine is started at once, in that callback: a command that
never waits (``list``, ``status``, ``stats`` ...) is answered before the next
request is read, with no further turn of the loop, which is what makes a
round trip cost about what a bare ZMQ echo costs. A command that does wait (a
stop with a long graceful_timeout) goes on as its own asyncio task from where
it stopped, so it never holds up the socket or the commands behind it. On
Python 3.12 and later that is an eager task (``eager_start``), whose first
step runs inside the task. Python 3.11 has none: there the first step runs
with no current task, and the task takes the coroutine over where it stopped
(`_Suspended`); so a command must not enter ``asyncio.timeout()`` before its
first ``await`` (``asyncio.wait_for`` only enters it from 3.12 on).
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
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
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

EAGER_START = sys.version_info >= (3, 12)
"""Whether asyncio runs a task's first step at once, inside the task (Python 3.12)."""
DRAIN_TIMEOUT = 2.0
"""On close, how long replies still being computed may take to go out."""

# pyzmq's constants are enum members, whose ``&`` and ``|`` run Python code; every request
# pays for those operations, so the request path uses the plain numbers.
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)


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
        self.answering: set[asyncio.Task[None]] = set()
        """The requests whose answer waits (a stop, a reload): `close` lets them finish."""

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
        pending = [task for task in self.answering if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
        if self.socket is not None:
            self.socket.close(linger=int(DRAIN_TIMEOUT * 1000))
            self.socket = None
        if self._auth is not None:
            self._auth.stop()
        self.context.term()

    def _receive(self) -> None:
        """Answer every waiting request (the ZMQ fd is edge-triggered: drain it)."""
        while self.socket is not None and self.socket.get(EVENTS) & POLLIN:
            try:
                frames = self.socket.recv_multipart(NOBLOCK)
            except zmq.ZMQError as exc:
                log.error("controller_receive_failed", error=str(exc))
                return
            if len(frames) < 2:
                log.warning("controller_unexpected_message", frames=len(frames))
                continue
            self._start(self._answer(frames[:-1], frames[-1]))

    def _start(self, answer: Coroutine[Any, Any, None]) -> None:
        """Run ``answer`` up to its first wait; a task carries it on from there, if it waits."""
        loop = asyncio.get_running_loop()
        if EAGER_START:
            task = asyncio.Task(answer, loop=loop, eager_start=True)
            if task.done():
                _log_failure(task)
                return
        else:
            try:
                awaited = answer.send(None)
            except StopIteration:
                return  # answered already
            except Exception as exc:
                _answer_failed(exc)
                return
            task = loop.create_task(_resume(answer, awaited))
        self.answering.add(task)
        task.add_done_callback(self._answered_later)

    def _answered_later(self, task: asyncio.Task[None]) -> None:
        self.answering.discard(task)
        _log_failure(task)
        # Sending the reply can consume the fd's edge for requests that arrived meanwhile.
        self._receive()

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
            for frame in route:
                self.socket.send(frame, NOBLOCK | SNDMORE)
            self.socket.send(encode(reply), NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("controller_reply_failed", error=str(exc))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _answer_failed(task.exception())


def _answer_failed(exc: BaseException | None) -> None:
    """A bug costs one reply, never the control socket: it is logged."""
    log.error("controller_answer_failed", error=str(exc), exc_info=exc)


async def _resume(answer: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Carry on ``answer``, which stopped on ``awaited`` (what its first step yielded)."""
    await _Suspended(answer, awaited)


class _Suspended:
    """A coroutine stopped at an ``await``: awaiting this resumes it where it stopped.

    The task that awaits it waits on what the coroutine was waiting on, then
    passes every value and exception (a cancellation) on to the coroutine.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
        self.coroutine = coroutine
        self.awaited = awaited

    def __await__(self) -> Generator[Any, Any, None]:
        awaited = self.awaited
        while True:
            try:
                value = yield awaited
            except BaseException as exc:  # a cancellation: the coroutine decides what it does
                step = self.coroutine.throw
                argument: Any = exc
            else:
                step = self.coroutine.send
                argument = value
            try:
                awaited = step(argument)
            except StopIteration:
                return
