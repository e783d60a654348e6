"""Tests for broker/steering.py: the program steers real loopback connections (needs root).

Each test binds an ``so_reuseport`` master on 127.0.0.1 port 0 as the broker
does, gives it its steering (`steer`), binds siblings on its port
(`bind_reuseport_sibling`, which attaches the program), fills the slots as the
supervisor would, connects and counts what each sibling accepts.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from chapiteau.broker.binding import BoundSocket, bind_master, bind_reuseport_sibling
from chapiteau.broker.socket_table import apply_reload, close_all, steer
from chapiteau.broker.steering import Steering, load_program
from chapiteau.protocol.steering_maps import (
    MAP_TYPE_ARRAY,
    SteeringUnavailable,
    create_map,
    empty_slot,
    fill_slot,
    set_count,
)
from tests.broker_events import broker_events
from tests.forked import in_child
from tests.specs import USER
from tests.specs import socket_spec as spec

CONNECTIONS = 20
NOBODY = 65534


def bpf_unavailable() -> str | None:
    """Why this test process cannot load the program, or None."""
    if os.geteuid() != 0:
        return "loading an SK_REUSEPORT program needs root (CAP_BPF)"
    try:
        Steering.create().close()
    except SteeringUnavailable as exc:
        return f"bpf(2) refused here: {exc.strerror}"
    return None


UNAVAILABLE = bpf_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@pytest.fixture
def table() -> Iterator[dict[str, BoundSocket]]:
    """One steered so_reuseport master, ``web``, closed (with its steering) afterwards."""
    sockets = {"web": bind_master(spec(so_reuseport=True), USER)}
    steer(sockets)
    yield sockets
    close_all(sockets.values())


@pytest.fixture
def siblings(table: dict[str, BoundSocket]) -> Iterator[list[socket.socket]]:
    """Two siblings of ``web`` (A, B), as a worker's socket each."""
    bound = [bind_reuseport_sibling(table["web"]) for _ in range(2)]
    yield [sibling.sock for sibling in bound]
    close_all(bound)


def port_of(table: dict[str, BoundSocket]) -> int:
    return table["web"].sock.getsockname()[1]


def connect(port: int, count: int = CONNECTIONS) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def accepted(sock: socket.socket) -> list[socket.socket]:
    """Every connection waiting in ``sock``'s queue (the handshake is over once connect returns)."""
    sock.setblocking(False)
    found = []
    while True:
        try:
            found.append(sock.accept()[0])
        except BlockingIOError:
            return found


def counts(port: int, *listeners: socket.socket) -> list[int]:
    """Connect CONNECTIONS times to ``port``: how many each listener accepted."""
    clients = connect(port)
    result = []
    for listener in listeners:
        conns = accepted(listener)
        result.append(len(conns))
        close_all_sockets(conns)
    close_all_sockets(clients)
    return result


def close_all_sockets(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_steer_gives_a_reuseport_master_its_program_and_maps(table):
    assert table["web"].steering is not None


def test_a_master_without_so_reuseport_gets_no_steering():
    sockets = {"web": bind_master(spec(), USER)}
    steer(sockets)
    try:
        assert sockets["web"].steering is None
    finally:
        close_all(sockets.values())


def test_every_connection_goes_to_the_socket_in_the_open_slot(table, siblings):
    a, b = siblings
    steering = table["web"].steering
    fill_slot(steering.slots_map, 0, a.fileno())
    set_count(steering.count_map, 1)
    assert counts(port_of(table), a, b) == [CONNECTIONS, 0]


def test_an_emptied_slot_sends_every_connection_to_the_other_open_door(table, siblings):
    a, b = siblings
    steering = table["web"].steering
    fill_slot(steering.slots_map, 0, a.fileno())
    fill_slot(steering.slots_map, 1, b.fileno())
    set_count(steering.count_map, 2)
    empty_slot(steering.slots_map, 0)
    assert counts(port_of(table), a, b) == [0, CONNECTIONS]


def test_connections_waiting_on_a_closed_socket_migrate_to_an_open_one(table, siblings):
    a, b = siblings
    steering = table["web"].steering
    fill_slot(steering.slots_map, 0, a.fileno())
    set_count(steering.count_map, 1)
    clients = connect(port_of(table), 5)
    for client in clients:
        client.sendall(b"request")
    fill_slot(steering.slots_map, 1, b.fileno())
    set_count(steering.count_map, 2)
    empty_slot(steering.slots_map, 0)
    a.close()
    migrated = accepted(b)
    try:
        assert [conn.recv(16) for conn in migrated] == [b"request"] * 5
    finally:
        close_all_sockets(migrated + clients)


def test_with_no_open_door_the_kernel_chooses_among_all_sockets(table, siblings):
    assert sum(counts(port_of(table), *siblings)) == CONNECTIONS


def test_a_socket_of_another_group_in_a_slot_is_never_selected(table, siblings):
    # What a hostile supervisor could do with the maps: put there another port's socket.
    other = bind_master(spec(name="other", so_reuseport=True), USER)
    stranger = bind_reuseport_sibling(other)
    try:
        steering = table["web"].steering
        # Linux 6.18 takes it (the group is checked at selection); refusing it would do too.
        with contextlib.suppress(OSError):
            fill_slot(steering.slots_map, 0, stranger.fd)
        set_count(steering.count_map, 1)
        here = counts(port_of(table), *siblings, stranger.sock)
        assert (sum(here[:2]), here[2]) == (CONNECTIONS, 0)
    finally:
        close_all([stranger, other])


def test_an_unprivileged_process_fills_the_slots_through_the_fds(table, siblings):
    a, b = siblings
    steering = table["web"].steering

    def as_nobody() -> str:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        fill_slot(steering.slots_map, 0, b.fileno())
        set_count(steering.count_map, 1)
        return "filled"

    assert in_child(as_nobody) == (0, "filled")
    assert counts(port_of(table), a, b) == [0, CONNECTIONS]


def test_a_section_the_kernel_refuses_a_program_is_served_without_after_a_warning():
    def as_nobody() -> str:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        sockets = {"web": bind_master(spec(so_reuseport=True), USER)}
        with broker_events("warning") as events:
            steer(sockets)
        sibling = bind_reuseport_sibling(sockets["web"])
        close_all([sibling, *sockets.values()])
        warned = [(e["event"], e["name"]) for e in events]
        return f"{sockets['web'].steering} {warned}"

    assert in_child(as_nobody) == (0, "None [('steering_unavailable', 'web')]")


def test_a_removed_section_closes_its_steering(table):
    steering = table["web"].steering
    apply_reload(table, {}, USER)
    with pytest.raises(OSError):
        os.fstat(steering.program)


def test_a_section_adjusted_by_a_reload_keeps_its_steering(table):
    steering = table["web"].steering
    apply_reload(table, {"web": spec(so_reuseport=True, backlog=7)}, USER)
    assert table["web"].steering is steering


def test_a_reuseport_section_added_by_a_reload_has_no_steering_and_says_so(table):
    with broker_events("warning") as events:
        apply_reload(table, {"web": table["web"].spec, "new": spec("new", so_reuseport=True)}, USER)
    assert table["new"].steering is None
    assert [(e["event"], e["name"]) for e in events] == [("steering_unavailable", "new")]


def test_a_program_the_verifier_rejects_says_why():
    # An ARRAY where the REUSEPORT_SOCKARRAY belongs: the verifier refuses the select call.
    array = create_map(MAP_TYPE_ARRAY, 4, 1)
    try:
        with pytest.raises(OSError, match=r"the verifier said: .*map_type"):
            load_program(array, array)
    finally:
        os.close(array)


def test_the_bench_counts_one_run_of_the_program_per_connection(table, siblings):
    """bench/steering.py finds the program among this process's fds by its name (the
    offsets into struct bpf_prog_info it hard-codes) and reads its counters."""
    from bench.steering import bpf_stats, steering_counters

    a, b = siblings
    steering = table["web"].steering
    fill_slot(steering.slots_map, 0, a.fileno())
    set_count(steering.count_map, 1)
    with bpf_stats():
        before = steering_counters(os.getpid())
        counts(port_of(table), a, b)
        after = steering_counters(os.getpid())
    assert after[1] - before[1] == CONNECTIONS
    assert after[0] > before[0]
