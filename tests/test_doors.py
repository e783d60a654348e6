"""Doors: the steering slots of one so_reuseport socket, on real BPF maps (root only)."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

import pytest

from chapiteau.protocol.steering_maps import (
    MAP_LOOKUP_ELEM,
    MAP_TYPE_ARRAY,
    MAP_TYPE_REUSEPORT_SOCKARRAY,
    SLOTS,
    bpf,
    create_map,
    read_count,
    set_count,
)
from chapiteau.supervisor.doors import Doors


def _maps() -> tuple[int, int]:
    try:
        return create_map(MAP_TYPE_ARRAY, 4, 1), create_map(MAP_TYPE_REUSEPORT_SOCKARRAY, 8, SLOTS)
    except OSError as exc:
        pytest.skip(f"cannot create BPF maps here: {exc}")


@pytest.fixture
def doors():
    if os.geteuid() != 0:
        pytest.skip("BPF maps need root (CAP_BPF)")
    count_map, slots_map = _maps()
    doors = Doors("web", count_map, slots_map)
    yield doors
    if doors.count_map >= 0:
        doors.close_maps()


@pytest.fixture
def listeners():
    """Five listening sockets of one SO_REUSEPORT group on a loopback port."""
    made = []
    port = 0
    for _ in range(5):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(8)
        port = sock.getsockname()[1]
        made.append(sock)
    yield made
    for sock in made:
        sock.close()


def filled(slots_map: int) -> set[int]:
    """The slots of the map that hold a socket."""
    found = set()
    for slot in range(16):
        key = ctypes.create_string_buffer(struct.pack("=I", slot))
        value = ctypes.create_string_buffer(8)
        attr = struct.pack(
            "=IIQQQ", slots_map, 0, ctypes.addressof(key), ctypes.addressof(value), 0
        )
        try:
            bpf(MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            assert exc.errno == errno.ENOENT
            continue
        found.add(slot)
    return found


def test_each_door_takes_the_lowest_free_slot_and_the_count_follows(doors, listeners):
    slots = [doors.open(sock.fileno()) for sock in listeners[:3]]
    assert slots == [0, 1, 2]
    assert read_count(doors.count_map) == 3
    doors.close(1)
    assert filled(doors.slots_map) == {0, 2}
    assert read_count(doors.count_map) == 3
    assert doors.open(listeners[3].fileno()) == 1
    doors.close(2)
    assert read_count(doors.count_map) == 2
    assert filled(doors.slots_map) == {0, 1}


def test_closing_the_top_doors_lowers_the_count_to_the_highest_open_one(doors, listeners):
    for sock in listeners[:4]:
        doors.open(sock.fileno())
    doors.close(1)
    doors.close(3)
    assert read_count(doors.count_map) == 3
    doors.close(2)
    assert read_count(doors.count_map) == 1
    doors.close(0)
    assert read_count(doors.count_map) == 0
    assert filled(doors.slots_map) == set()


def test_a_closed_socket_leaves_its_slot_and_closing_its_door_is_fine(doors, listeners):
    slot = doors.open(listeners[0].fileno())
    listeners[0].close()
    assert filled(doors.slots_map) == set()
    doors.close(slot)
    assert read_count(doors.count_map) == 0


def test_restore_keeps_the_adopted_slots_and_empties_the_others(doors, listeners):
    """A new supervisor: slots 0 and 3 belong to adopted workers; 1, 2 and 4 were filled by
    workers the previous one never recorded."""
    for sock in listeners:
        doors.open(sock.fileno())
    successor = Doors("web", doors.count_map, doors.slots_map)
    successor.restore({0, 3})
    assert filled(doors.slots_map) == {0, 3}
    assert read_count(doors.count_map) == 4
    assert successor.open(listeners[1].fileno()) == 1
    assert successor.open(listeners[2].fileno()) == 2
    assert successor.open(listeners[4].fileno()) == 4


def test_restore_with_nothing_adopted_empties_every_slot(doors, listeners):
    for sock in listeners[:2]:
        doors.open(sock.fileno())
    set_count(doors.count_map, 2)
    Doors("web", doors.count_map, doors.slots_map).restore(set())
    assert filled(doors.slots_map) == set()
    assert read_count(doors.count_map) == 0


def test_doors_whose_maps_are_closed_do_nothing(doors, listeners):
    """A reload gave the socket new maps: the old `Doors` never use the old fds' numbers
    again (they may already name something else), and fill no slot."""
    slot = doors.open(listeners[0].fileno())
    doors.close_maps()
    assert (doors.count_map, doors.slots_map) == (-1, -1)
    doors.close(slot)
    assert doors.open(listeners[1].fileno()) is None
