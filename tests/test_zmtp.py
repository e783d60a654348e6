"""Tests for chapiteau.protocol.zmtp: ZMTP 3 NULL framing, in memory and against libzmq.

In memory, two `Connection` objects talk to each other with the bytes cut at random
places; on loopback, our side talks to a real pyzmq ROUTER (we connect, as
chapiteauctl does) and to a real pyzmq DEALER (it connects to us), frames drawn
by hypothesis.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chapiteau.protocol.zmtp import (
    GREETING_SIZE,
    Connection,
    Message,
    Ready,
    ZMTPError,
    command,
    frame,
    greeting,
    properties,
)

TIMEOUT = 10.0
FRAMES = st.lists(st.binary(max_size=700), min_size=1, max_size=4).map(tuple)
"""Messages of short and long frames (the long form starts at 256 bytes)."""


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def handshake(a: Connection, b: Connection) -> None:
    """Let ``a`` and ``b`` exchange greetings and READY until both are ready."""
    while a.state != "ready" or b.state != "ready":
        b.receive(a.data_to_send())
        a.receive(b.data_to_send())


def test_the_greeting_is_version_3_with_the_null_mechanism() -> None:
    data = greeting()
    assert len(data) == GREETING_SIZE
    assert data[:10] == b"\xff" + b"\x00" * 8 + b"\x7f"
    assert data[10:12] == b"\x03\x00"
    assert data[12:32] == b"NULL" + b"\x00" * 16
    assert data[32:] == b"\x00" * 32


def test_frames_up_to_255_bytes_are_short_and_longer_ones_long() -> None:
    assert frame(b"x" * 255, more=True) == b"\x01\xff" + b"x" * 255
    assert frame(b"x" * 256) == b"\x02" + struct.pack("!Q", 256) + b"x" * 256


def test_ready_waits_for_the_peers_greeting_and_messages_for_its_ready() -> None:
    dealer, router = Connection("DEALER"), Connection("ROUTER", as_server=True)
    dealer.send([b"early"])
    assert dealer.data_to_send() == greeting()
    assert router.receive(greeting()) == []
    assert dealer.receive(router.data_to_send()) == [Ready({"Socket-Type": b"ROUTER"})]
    assert router.receive(dealer.data_to_send()) == [
        Ready({"Socket-Type": b"DEALER"}),
        Message((b"early",)),
    ]


@given(messages=st.lists(FRAMES, min_size=1, max_size=4), cuts=st.lists(st.integers(0, 5000)))
def test_messages_arrive_whole_however_the_bytes_are_cut(
    messages: list[tuple[bytes, ...]], cuts: list[int]
) -> None:
    dealer, router = Connection("DEALER"), Connection("ROUTER")
    handshake(dealer, router)
    for frames in messages:
        dealer.send(frames)
    received = []
    for piece in chunks(dealer.data_to_send(), cuts):
        received += router.receive(piece)
    assert received == [Message(frames) for frames in messages]


@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_after_the_handshake_is_a_zmtp_error_or_incomplete(garbage: bytes) -> None:
    dealer, router = Connection("DEALER"), Connection("ROUTER")
    handshake(dealer, router)
    try:
        events = router.receive(garbage)
    except ZMTPError:
        return
    assert all(isinstance(event, Message) for event in events)


@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_instead_of_a_greeting_or_ready_never_raises_anything_else(garbage: bytes) -> None:
    for prefix in (b"", greeting()):
        dealer = Connection("DEALER")
        with contextlib.suppress(ZMTPError):
            dealer.receive(prefix + garbage)


def refused(data: bytes) -> str:
    with pytest.raises(ZMTPError) as caught:
        Connection("DEALER").receive(data)
    return str(caught.value)


def test_a_peer_that_does_not_speak_zmtp_is_refused_at_its_first_byte() -> None:
    assert "does not speak ZMTP" in refused(b"HTTP/1.1 200 OK\r\n")


def test_a_zmtp_2_peer_is_refused() -> None:
    assert "ZMTP 3 is needed" in refused(greeting()[:10] + b"\x01" + greeting()[11:])


def test_a_curve_peer_is_refused() -> None:
    curve = greeting()[:12] + b"CURVE".ljust(20, b"\x00") + greeting()[32:]
    assert "CURVE mechanism" in refused(curve)


def test_a_message_before_ready_is_refused() -> None:
    assert "before its READY" in refused(greeting() + frame(b"hello"))


def test_an_error_command_is_refused_with_its_reason() -> None:
    error = command(b"ERROR", b"\x0bunavailable")
    assert refused(greeting() + error).endswith("refused the connection: unavailable")


def test_a_peer_of_an_incompatible_socket_type_is_refused() -> None:
    pub = command(b"READY", properties({"Socket-Type": b"PUB"}))
    assert "DEALER cannot talk to a PUB" in refused(greeting() + pub)


def test_a_truncated_ready_is_refused() -> None:
    cut = command(b"READY", properties({"Socket-Type": b"ROUTER"})[:-2])
    assert "truncated" in refused(greeting() + cut)


def test_unknown_frame_flags_are_refused() -> None:
    ready = command(b"READY", properties({"Socket-Type": b"ROUTER"}))
    assert "unknown flags" in refused(greeting() + ready + b"\x40\x00")


def test_other_commands_are_ignored() -> None:
    ready = command(b"READY", properties({"Socket-Type": b"ROUTER"}))
    ping = command(b"PING", b"\x00\x00")
    events = Connection("DEALER").receive(greeting() + ready + ping + frame(b"after"))
    assert events == [Ready({"Socket-Type": b"ROUTER"}), Message((b"after",))]


# -- against libzmq ---------------------------------------------------------------------------


def settle(sock: socket.socket, connection: Connection) -> None:
    """Write and read until the handshake is done and what was queued is written."""
    while True:
        if data := connection.data_to_send():
            sock.sendall(data)
        if connection.state == "ready":
            return
        received = sock.recv(65536)
        assert received, "libzmq closed the connection"
        connection.receive(received)


def exchange(sock: socket.socket, connection: Connection) -> list[Message]:
    """Write what ``connection`` has to send, then read until it yields a message."""
    while True:
        if data := connection.data_to_send():
            sock.sendall(data)
        received = sock.recv(65536)
        assert received, "libzmq closed the connection"
        messages = [e for e in connection.receive(received) if isinstance(e, Message)]
        if data := connection.data_to_send():
            sock.sendall(data)
        if messages:
            return messages


LOOPBACK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
"""The loopback tests share one connection across hypothesis' examples, on purpose."""


@contextlib.contextmanager
def libzmq(kind: int) -> Iterator[zmq.Socket]:
    """A pyzmq socket of ``kind`` that gives up after TIMEOUT."""
    context = zmq.Context()
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = sock.sndtimeo = int(TIMEOUT * 1000)
    try:
        yield sock
    finally:
        sock.close()
        context.term()


@pytest.fixture(scope="module")
def router() -> Iterator[tuple[zmq.Socket, socket.socket, Connection]]:
    """A pyzmq ROUTER on loopback, and our DEALER connected to it."""
    with libzmq(zmq.ROUTER) as sock:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as ours:
            yield sock, ours, Connection("DEALER", identity=b"us")


@LOOPBACK
@given(frames=FRAMES)
def test_a_pyzmq_router_gets_our_frames_and_answers_them(
    router: tuple[zmq.Socket, socket.socket, Connection], frames: tuple[bytes, ...]
) -> None:
    theirs, ours, connection = router
    connection.send(frames)
    settle(ours, connection)
    identity, *got = theirs.recv_multipart()
    assert (identity, tuple(got)) == (b"us", frames)
    theirs.send_multipart([identity, *frames])
    assert exchange(ours, connection) == [Message(frames)]


@pytest.fixture(scope="module")
def dealer() -> Iterator[tuple[zmq.Socket, socket.socket, Connection]]:
    """Our side listening on loopback as a ROUTER would, and a pyzmq DEALER connected to it."""
    with libzmq(zmq.DEALER) as sock, socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        sock.connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        ours, _ = listener.accept()
        with ours:
            ours.settimeout(TIMEOUT)
            yield sock, ours, Connection("ROUTER", as_server=True)


@LOOPBACK
@given(frames=FRAMES)
def test_a_pyzmq_dealer_reaches_us_and_gets_our_answer(
    dealer: tuple[zmq.Socket, socket.socket, Connection], frames: tuple[bytes, ...]
) -> None:
    theirs, ours, connection = dealer
    theirs.send_multipart(list(frames))
    assert exchange(ours, connection) == [Message(frames)]
    connection.send(frames)
    ours.sendall(connection.data_to_send())
    assert tuple(theirs.recv_multipart()) == frames
