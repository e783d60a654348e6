"""Set up the supervisor's ZMQ endpoints: CURVE keys, binding, rebinding, errors.

The control endpoint (controller.py), the event endpoint (pubsub.py) and the
stats endpoint (stats.py) bind their sockets through `prepare_endpoint`, so an
``ipc://`` directory is created and checked, CURVE applied and an open
``tcp://`` endpoint warned about the same way for all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import zmq
import zmq.auth

from chapiteau.supervisor.config import UnknownIdentity, user_ids

log = structlog.get_logger("chapiteau.supervisor")

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
            hint=(
                "anyone who can connect may send commands"
                if what == "endpoint"
                else "anyone who can connect may read what it publishes"
            )
            + "; use ipc:// or CURVE",
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
