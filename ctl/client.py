"""chapiteauctl's transport: a Circus DEALER client, CURVE keys, and the event listener.

A request goes over one of two transports, chosen by the endpoint: `ZMTPTransport`
speaks ZMTP 3 itself over a standard library socket (``tcp://`` and ``ipc://``,
NULL mechanism: `chapiteau.protocol.zmtp`), so that a command does not pay for
importing pyzmq; `ZMQTransport` is pyzmq's DEALER, for CURVE and any other
endpoint. `Client` matches replies to requests the same way over both.
zmq is imported only by the functions that use it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, NamedTuple, Protocol

from chapiteau.protocol.circus_messages import decode_reply, encode, make_request
from chapiteau.protocol.zmtp import Connection, Message, ZMTPError

RECEIVE_BYTES = 1 << 16


class CallError(Exception):
    """No usable reply: timed out, or the transport failed."""


class CurveClient(NamedTuple):
    """Client CURVE settings: the server's public key and, optionally, this client's key pair."""

    server_key: str
    client_key_file: str | None = None


class Transport(Protocol):
    """Carries request frames to a control endpoint and reply frames back."""

    def send(self, body: bytes) -> None:
        """Send one frame; CallError if the transport failed."""

    def receive(self, deadline: float) -> bytes:
        """The next frame; TimeoutError after ``deadline`` (monotonic), CallError if it failed."""

    def usable(self) -> bool:
        """False once the daemon closed the connection (it restarted): connect again."""

    def close(self) -> None: ...


class Client:
    """A DEALER connected to a control endpoint; replies are matched on their id."""

    def __init__(self, endpoint: str, timeout: float, curve: CurveClient | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._transport: Transport | None = None

    def call(self, command: str, properties: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait ``timeout`` seconds for its reply."""
        deadline = time.monotonic() + self.timeout
        if self._transport is not None and not self._transport.usable():
            self.close()
        if self._transport is None:
            self._transport = connect(self.endpoint, self.timeout, self.curve)
        request_id = os.urandom(16).hex()
        try:
            self._transport.send(encode(make_request(command, properties, request_id)))
            while True:
                try:
                    reply = decode_reply(self._transport.receive(deadline))
                except ValueError as exc:
                    raise CallError(f"invalid reply: {exc}") from None
                if reply.get("id") == request_id:
                    return reply
        except TimeoutError:
            raise CallError("Timed out.") from None
        except CallError:
            # The next call starts on a new connection (a restarted daemon, say).
            self.close()
            raise

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def connect(endpoint: str, timeout: float, curve: CurveClient | None) -> Transport:
    """The transport for ``endpoint``: our own ZMTP for tcp:// and ipc://, else pyzmq."""
    if curve is None and endpoint.startswith(("tcp://", "ipc://")):
        return ZMTPTransport(endpoint, timeout)
    return ZMQTransport(endpoint, curve)


def open_socket(endpoint: str, timeout: float) -> socket.socket:
    """A stream socket connected to a ``tcp://HOST:PORT`` or ``ipc://PATH`` endpoint.

    As libzmq: an IPv6 host is written in brackets, and ``ipc://@NAME`` is the
    abstract socket NAME. ValueError for any other endpoint, OSError if the
    connection fails.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc" and rest:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect("\0" + rest[1:] if rest.startswith("@") else rest)
        except OSError:
            sock.close()
            raise
        return sock
    host, _, port = rest.rpartition(":")
    if scheme == "tcp" and host and port.isdigit() and ";" not in host:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout)
        # One small write per request: Nagle would hold it for the previous one's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ValueError("give tcp://HOST:PORT or ipc://PATH")


class ZMTPTransport:
    """A DEALER over a standard library socket, in ZMTP 3 with the NULL mechanism."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.connection = Connection("DEALER")
        self._messages: list[bytes] = []
        try:
            self.socket = open_socket(endpoint, timeout)
        except (OSError, ValueError) as exc:
            raise CallError(f"cannot connect to {endpoint}: {_reason(exc)}") from None

    def send(self, body: bytes) -> None:
        self.connection.send([body])
        self._flush()

    def _flush(self) -> None:
        """Write what the connection has to send: the handshake, then requests once it is done."""
        data = self.connection.data_to_send()
        if not data:
            return
        try:
            self.socket.sendall(data)
        except OSError as exc:
            raise CallError(f"cannot send: {_reason(exc)}") from None

    def receive(self, deadline: float) -> bytes:
        while not self._messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(RECEIVE_BYTES)
            except TimeoutError:
                raise
            except OSError as exc:
                raise CallError(f"connection lost: {_reason(exc)}") from None
            if not data and self.connection.state != "ready":
                # libzmq refuses a NULL greeting so when the endpoint uses CURVE.
                raise CallError(
                    f"{self.endpoint} closed the connection in the handshake: if it uses "
                    "CURVE, give its key with --curve-server-key"
                )
            if not data:
                raise CallError("connection lost: the daemon closed it")
            try:
                events = self.connection.receive(data)
            except ZMTPError as exc:
                raise CallError(str(exc)) from None
            self._flush()
            # A DEALER's message from a ROUTER is the reply frame alone.
            self._messages += [e.frames[-1] for e in events if isinstance(e, Message)]
        return self._messages.pop(0)

    def usable(self) -> bool:
        timeout = self.socket.gettimeout()
        self.socket.setblocking(False)
        try:
            return self.socket.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True  # open, nothing to read
        except OSError:
            return False
        finally:
            self.socket.settimeout(timeout)

    def close(self) -> None:
        self.socket.close()


class ZMQTransport:
    """pyzmq's DEALER: for CURVE, and for endpoints other than tcp:// and ipc://."""

    def __init__(self, endpoint: str, curve: CurveClient | None) -> None:
        import zmq

        self._zmq = zmq
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        if curve is not None:
            apply_curve(self.socket, curve)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise CallError(f"cannot connect to {endpoint}: {exc}") from None
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def send(self, body: bytes) -> None:
        try:
            self.socket.send(body)
        except self._zmq.ZMQError as exc:
            raise CallError(str(exc)) from None

    def receive(self, deadline: float) -> bytes:
        try:
            ready = self.poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        except self._zmq.ZMQError as exc:
            raise CallError(str(exc)) from None
        if not ready:
            raise TimeoutError
        return self.socket.recv()

    def usable(self) -> bool:
        return True  # pyzmq reconnects by itself

    def close(self) -> None:
        self.socket.close(linger=0)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def apply_curve(sock: Any, curve: CurveClient) -> None:
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


def listen(endpoint: str, topics: list[str], curve: CurveClient | None = None) -> int:
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
