"""Tests for chapiteau.protocol.channel over a real SEQPACKET socketpair."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator

import pytest

from chapiteau.protocol.broker_messages import (
    HEADER,
    MAX_FDS_PER_MESSAGE,
    MAX_FRAME_BYTES,
    GetSockets,
    Hello,
    ProtocolError,
    SocketInfo,
    Sockets,
    encode,
)
from chapiteau.protocol.channel import channel_pair, close_fds, receive, send

SCM_MAX_FD = 253
TIMEOUT = 5.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = channel_pair()
    left.settimeout(TIMEOUT)
    right.settimeout(TIMEOUT)
    yield left, right
    left.close()
    right.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def info_of(sock: socket.socket) -> SocketInfo:
    host, port = sock.getsockname()
    return SocketInfo(
        "web", "AF_INET", "SOCK_STREAM", host, port, inode=os.fstat(sock.fileno()).st_ino
    )


def test_pair_is_seqpacket_and_close_on_exec(pair: tuple[socket.socket, socket.socket]) -> None:
    for end in pair:
        assert end.type == socket.SOCK_SEQPACKET
        assert not os.get_inheritable(end.fileno())


def test_the_broker_end_of_a_pair_refuses_fds_and_the_peer_end_takes_them(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    broker_end, peer_end = pair
    with pytest.raises(PermissionError):
        send(peer_end, Sockets((info_of(listener),)), 1, [listener.fileno()])
    send(broker_end, Sockets((info_of(listener),)), 2, [listener.fileno()])
    received = receive(peer_end)
    assert received is not None and len(received.fds) == 1
    close_fds(received.fds)


def test_message_without_fds_arrives_intact(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    send(left, GetSockets(("web", "api")), 42)
    received = receive(right)
    assert received is not None
    assert (received.request_id, received.message, received.fds) == (
        42,
        GetSockets(("web", "api")),
        (),
    )


def test_received_fds_refer_to_the_sent_socket(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    left, right = pair
    send(left, Sockets((info_of(listener),)), 7, [listener.fileno()])
    received = receive(right)
    assert received is not None
    try:
        assert received.message == Sockets((info_of(listener),))
        assert os.fstat(received.fds[0]).st_ino == os.fstat(listener.fileno()).st_ino
        assert received.fds[0] != listener.fileno()
    finally:
        close_fds(received.fds)


def test_received_fds_are_close_on_exec_even_when_the_sent_fd_was_not(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    left, right = pair
    listener.set_inheritable(True)
    send(left, Sockets((info_of(listener),)), 7, [listener.fileno()])
    received = receive(right)
    assert received is not None
    try:
        assert not os.get_inheritable(received.fds[0])
    finally:
        close_fds(received.fds)


def test_sending_the_wrong_number_of_fds_is_refused(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    with pytest.raises(ValueError, match="needs 0 fds"):
        send(pair[0], Hello(), 1, [listener.fileno()])


def assert_refused_and_closed(
    pair: tuple[socket.socket, socket.socket], datagram: bytes, fds: list[int]
) -> None:
    """``datagram`` sent with ``fds`` is refused as unexpected_fds, and no fd stays open."""
    left, right = pair
    before = open_fds()
    socket.send_fds(left, [datagram], fds)
    with pytest.raises(ProtocolError) as caught:
        receive(right)
    assert caught.value.code == "unexpected_fds"
    assert open_fds() == before


def test_fds_on_a_message_that_carries_none_are_refused_and_closed(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    assert_refused_and_closed(pair, encode(Hello(), 1), [listener.fileno()] * 3)


def test_sockets_with_too_few_fds_is_refused_and_its_fds_closed(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    message = Sockets((info_of(listener),) * 2)
    assert_refused_and_closed(pair, encode(message, 1), [listener.fileno()])


def test_fds_with_an_empty_datagram_are_refused_and_closed(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    assert_refused_and_closed(pair, b"", [listener.fileno()])


def test_more_fds_than_fit_is_truncated_control_data_and_all_are_closed(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    left, right = pair
    before = open_fds()
    fds = array.array("i", [listener.fileno()] * SCM_MAX_FD)
    left.sendmsg([encode(Hello(), 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    with pytest.raises(ProtocolError, match="truncated") as caught:
        receive(right)
    assert caught.value.code == "bad_frame"
    assert open_fds() == before


def test_the_maximum_fds_per_message_arrive(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    left, right = pair
    message = Sockets((info_of(listener),) * MAX_FDS_PER_MESSAGE)
    send(left, message, 1, [listener.fileno()] * MAX_FDS_PER_MESSAGE)
    received = receive(right)
    assert received is not None
    close_fds(received.fds)
    assert len(received.fds) == MAX_FDS_PER_MESSAGE


@pytest.mark.parametrize("size", [MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES])
def test_oversized_datagram_is_a_bad_frame(
    pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    left, right = pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MAX_FRAME_BYTES)
    payload = b" " * (size - HEADER.size)
    left.send(HEADER.pack(len(payload)) + payload)
    with pytest.raises(ProtocolError, match="larger than") as caught:
        receive(right)
    assert caught.value.code == "bad_frame"


def test_fds_on_an_oversized_datagram_are_closed(
    pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    left, right = pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MAX_FRAME_BYTES)
    before = open_fds()
    socket.send_fds(left, [b"x" * (2 * MAX_FRAME_BYTES)], [listener.fileno()] * 2)
    with pytest.raises(ProtocolError):
        receive(right)
    assert open_fds() == before


def test_a_rejected_frame_does_not_disturb_the_next_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    left.send(b"\x00\x00\x00\x09garbage")
    send(left, Hello(), 2)
    with pytest.raises(ProtocolError):
        receive(right)
    received = receive(right)
    assert received is not None
    assert (received.request_id, received.message) == (2, Hello())


def test_peer_close_is_none(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.close()
    assert receive(right) is None


def test_nothing_to_read_on_a_nonblocking_socket_is_blocking_io_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    pair[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        receive(pair[1])
