"""Tests for supervisor/broker_client.py: the replies a broker queued are what the client returns.

The broker's end of a real channel pair has its replies queued before the
client asks (SEQPACKET keeps each frame and its fds): the client's requests
are numbered from 1, the first being its hello.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from chapiteau.protocol.broker_messages import (
    PROTOCOL_VERSION,
    Error,
    Message,
    SteeringMaps,
    Welcome,
)
from chapiteau.protocol.channel import channel_pair, close_fds, send
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose write end stands for a map: the read end sees EOF once every copy is closed."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    close_fds([read_end])


@pytest.fixture
def answered() -> Iterator[Callable[..., BrokerClient]]:
    """Make a client whose broker answered its hello, then each of the given replies in turn."""
    ends: list[socket.socket] = []

    def client(*replies: tuple[Message, list[int]]) -> BrokerClient:
        broker_end, peer_end = channel_pair()
        ends.append(broker_end)
        send(broker_end, Welcome(PROTOCOL_VERSION, 1), 1)
        for request_id, (message, fds) in enumerate(replies, start=2):
            send(broker_end, message, request_id, fds)
        return BrokerClient(peer_end)

    yield client
    for end in ends:
        end.close()


def test_get_steering_returns_the_count_map_then_the_slots_map(answered, pipe):
    # Two fds of different files stand for the two maps.
    marks = [os.open(os.devnull, os.O_RDONLY), pipe[1]]
    client = answered((SteeringMaps("web"), marks))
    count_map, slots_map = client.get_steering("web")
    client.close()
    try:
        assert os.path.samestat(os.fstat(count_map), os.fstat(marks[0]))
        assert os.path.samestat(os.fstat(slots_map), os.fstat(marks[1]))
    finally:
        close_fds([count_map, slots_map, marks[0]])


def test_get_steering_refused_raises_broker_error(answered):
    client = answered((Error("no_steering", "socket web has no steering program"), []))
    with pytest.raises(BrokerError, match="no steering program"):
        client.get_steering("web")
    client.close()


def test_get_steering_answered_for_another_socket_closes_the_fds(answered, pipe):
    read_end, write_end = pipe
    client = answered((SteeringMaps("other"), [write_end, write_end]))
    os.close(write_end)
    with pytest.raises(BrokerError, match="get_steering"):
        client.get_steering("web")
    client.close()
    assert os.read(read_end, 1) == b""
