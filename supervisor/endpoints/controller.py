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
import contextlib
import os
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from chapiteau.protocol.circus_messages import (
    MAX_REQUEST_BYTES,
    Request,
    encode,
    parse_request,
)
from chapiteau.supervisor.config import UnknownIdentity, user_ids

log = structlog.get_logger("chapiteau.supervisor")

Handler = Callable[[Request, bytes], Awaitable[dict[str, Any] | None]]
"""Runs one request (with its raw frame, for error texts); None means no reply."""

DRAIN_TIMEOUT = 2.0
"""On close, how long replies still being computed may take to go out."""
UNBIND_DELAY = 1.0
"""After a rebind, how long the old endpoint keeps serving (the reply to reloadconfig)."""


class EndpointError(Exception):
    """An endpoint cannot be set up; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Curve:
    """CURVE settings of the endpoints: the server's key pair, and who may connect."""

    public_key: bytes
    secret_key: bytes
    clients_dir: str | None = None
    """Directory of allowed clients' public key files; None lets any CURVE client in."""

    @classmethod
    def load(cls, secret_key_file: str, clients_dir: str | None) -> Curve:
        """Read a key pair written by ``zmq.auth.create_certificates``."""
        try:
            public, secret = zmq.auth.load_certificate(secret_key_file)
        except (OSError, ValueError) as exc:
            raise EndpointError(
                f"endpoint_curve_secretkey: cannot read {secret_key_file!r}: {exc}; create one "
                "with zmq.auth.create_certificates()"
            ) from None
        if secret is None:
            raise EndpointError(
                f"endpoint_curve_secretkey: {secret_key_file!r} holds no secret key; use the "
                "'.key_secret' file of zmq.auth.create_certificates()"
            )
        if clients_dir is not None and not os.path.isdir(clients_dir):
            raise EndpointError(f"endpoint_curve_clients: {clients_dir!r} is not a directory")
        return cls(public, secret, clients_dir)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True


def prepare_endpoint(sock: zmq.Socket, endpoint: str, curve: Curve | None, what: str) -> None:
    """Bind ``sock`` on ``endpoint``: CURVE first, ipc directory created, a warning for open tcp."""
    if curve is not None:
        curve.apply(sock)
    if endpoint.startswith("ipc://"):
        directory = os.path.dirname(os.path.abspath(endpoint[len("ipc://") :]))
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700)
            except PermissionError:
                raise _unwritable(what, endpoint, os.path.dirname(directory)) from None
            except OSError as exc:
                raise EndpointError(
                    f"{what} {endpoint}: cannot create {directory}: {exc.strerror}; create it "
                    "writable by the service user"
                ) from None
        elif not os.access(directory, os.W_OK | os.X_OK):
            raise _unwritable(what, endpoint, directory)
    elif endpoint.startswith("tcp://") and curve is None:
        log.warning(
            "endpoint_unauthenticated",
            endpoint=endpoint,
            what=what,
            hint="anyone who can connect may send commands; use ipc:// or CURVE",
        )
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"{what} {endpoint}: cannot bind: {exc}") from None


def _unwritable(what: str, endpoint: str, directory: str) -> EndpointError:
    """The service user (this process) cannot create the socket file of an ipc endpoint."""
    user = _user_name(os.geteuid())
    return EndpointError(
        f"{what} {endpoint}: the service user {user} cannot create files in {directory}, "
        f"where the socket file goes; use a directory that {user} may write (for example "
        f"one it owns: mkdir -p DIR && chown {user} DIR), or put the endpoint under the "
        "directory the broker prepares for it ([broker] runtime_directory = /run/circus)"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def rebind_endpoint(
    sock: zmq.Socket,
    old: str,
    new: str,
    curve: Curve | None,
    what: str,
    bound: Callable[[str], None] | None = None,
) -> None:
    """Bind ``sock`` on ``new`` as well; ``old`` keeps serving for UNBIND_DELAY, then goes.

    ``bound`` runs once ``new`` is bound (the controller chowns its ipc socket);
    when it raises, ``old`` is not unbound.
    """
    prepare_endpoint(sock, new, curve, what)
    if bound is not None:
        bound(new)
    asyncio.get_running_loop().call_later(UNBIND_DELAY, _unbind, sock, old)
    log.info("endpoint_rebound", what=what, endpoint=new, previous=old)


def _unbind(sock: zmq.Socket, endpoint: str) -> None:
    if not sock.closed:
        with contextlib.suppress(zmq.ZMQError):
            sock.unbind(endpoint)


def owner_uid(owner: str) -> int:
    """The uid named by ``endpoint_owner`` (a user name or a number)."""
    try:
        return user_ids(owner)[0]
    except UnknownIdentity as exc:
        raise EndpointError(f"endpoint_owner: {exc}") from None


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
        parsed = parse_request(body)
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
