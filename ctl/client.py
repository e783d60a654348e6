"""chapiteauctl's transport: a Circus DEALER client, CURVE keys, and the event listener.

zmq is imported inside the functions that send, so that ``chapiteauctl
--help`` and argument errors never pay for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from chapiteau.protocol.circus_messages import decode_reply, encode, make_request


class CallError(Exception):
    """No usable reply: timed out, or the transport failed."""


@dataclass(frozen=True)
class Curve:
    """Client CURVE settings: the server's public key and, optionally, this client's key pair."""

    server_key: str
    client_key_file: str | None = None


class Client:
    """A DEALER connected to a control endpoint; replies are matched on their id."""

    def __init__(self, endpoint: str, timeout: float, curve: Curve | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._socket: Any = None
        self._poller: Any = None

    def call(self, command: str, properties: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait ``timeout`` seconds for its reply."""
        import zmq

        if self._socket is None:
            self._socket = self._connect(zmq)
        request_id = os.urandom(16).hex()
        try:
            self._socket.send(encode(make_request(command, properties, request_id)))
        except zmq.ZMQError as exc:
            raise CallError(str(exc)) from None
        while True:
            try:
                events = dict(self._poller.poll(self.timeout * 1000))
            except zmq.ZMQError as exc:
                raise CallError(str(exc)) from None
            if not events:
                raise CallError("Timed out.")
            try:
                reply = decode_reply(self._socket.recv())
            except ValueError as exc:
                raise CallError(f"invalid reply: {exc}") from None
            if reply.get("id") == request_id:
                return reply

    def _connect(self, zmq: Any) -> Any:
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.identity = os.urandom(16).hex().encode()
        if self.curve is not None:
            apply_curve(sock, self.curve)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise CallError(f"cannot connect to {self.endpoint}: {exc}") from None
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


def apply_curve(sock: Any, curve: Curve) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``curve.server_key``."""
    import zmq
    import zmq.auth

    server_key = _public_key(curve.server_key)
    if curve.client_key_file:
        try:
            public, secret = zmq.auth.load_certificate(curve.client_key_file)
        except (OSError, ValueError) as exc:
            raise CallError(f"--curve-client-key {curve.client_key_file}: {exc}") from None
        if secret is None:
            raise CallError(
                f"--curve-client-key {curve.client_key_file}: no secret key in it; give the "
                "'.key_secret' file"
            )
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def _public_key(value: str) -> bytes:
    """A Z85 public key given inline, or read from a certificate file."""
    if os.path.exists(value):
        import zmq.auth

        try:
            public, _ = zmq.auth.load_certificate(value)
        except (OSError, ValueError) as exc:
            raise CallError(f"--curve-server-key {value}: {exc}") from None
        return public
    if len(value) != 40:
        raise CallError(
            "--curve-server-key: give the server's 40-character Z85 public key or its .key file"
        )
    return value.encode()


def listen(endpoint: str, topics: list[str], curve: Curve | None = None) -> int:
    """Print every event on ``endpoint`` whose topic starts with one of ``topics``, forever."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.linger = 0
    if curve is not None:
        apply_curve(sock, curve)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    try:
        while True:
            topic, message = sock.recv_multipart()[:2]
            text = f"{topic.decode(errors='replace')}: {message.decode(errors='replace')}"
            print(text, flush=True)
    finally:
        sock.close(linger=0)
