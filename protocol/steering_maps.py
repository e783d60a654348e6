"""The two BPF maps that steer an ``so_reuseport`` socket's new connections, and the
system calls on them.

The broker makes, for each ``so_reuseport`` section, a ``REUSEPORT_SOCKARRAY``
of `SLOTS` slots and a one-entry ``ARRAY`` holding a count ``n``, and attaches
to every worker's socket a program that sends each new connection (and each
connection waiting in a closed socket's queue) to an occupied slot among the
first ``n``, probing from ``hash % n``. The supervisor fills the slots: a
worker's socket is in a slot ("its door is open") while the worker may take
new connections; the slot is emptied before the worker is asked to stop. With
no occupied slot the kernel picks among all the group's sockets, as it would
with no program.

Both sides share this layout and the `bpf(2)` wrapper. Only the broker (with
CAP_BPF) creates maps; updating a map through an fd one holds needs no
privilege.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from chapiteau.protocol.syscall import syscall

SLOTS = 4096
"""Slots per socket: the most workers of one ``so_reuseport`` socket that steering serves."""
COUNT_KEY = 0

MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
PROG_LOAD = 5
MAP_TYPE_ARRAY = 2
MAP_TYPE_REUSEPORT_SOCKARRAY = 20
ATTR_SIZE = 144
"""sizeof(union bpf_attr) in the kernel headers this was written against; the kernel
accepts a shorter or longer one whose extra bytes are zero."""

_SYSCALL = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


class SteeringUnavailable(OSError):
    """bpf(2) is missing or refused (no CAP_BPF, an old kernel, an unknown machine)."""


def bpf(command: int, attr: bytes) -> int:
    """Call bpf(2) with ``attr`` (a packed union bpf_attr); its result, or OSError."""
    # os.uname(), not platform, which the broker never imports (tests/test_package_boundaries.py).
    machine = os.uname().machine
    number = _SYSCALL.get(machine)
    if number is None:
        raise SteeringUnavailable(errno.ENOSYS, f"no bpf(2) number for {machine}")
    return syscall(number, command, ctypes.create_string_buffer(attr, ATTR_SIZE), ATTR_SIZE)


def create_map(kind: int, value_size: int, entries: int) -> int:
    """A new map with u32 keys; its fd (close-on-exec, as every bpf fd)."""
    return bpf(MAP_CREATE, struct.pack("=IIII", kind, 4, value_size, entries))


def set_count(count_map: int, count: int) -> None:
    """Store ``n``, the number of slots the program probes."""
    _update(count_map, COUNT_KEY, struct.pack("=I", count))


def read_count(count_map: int) -> int:
    value = ctypes.create_string_buffer(4)
    key = ctypes.create_string_buffer(struct.pack("=I", COUNT_KEY))
    bpf(MAP_LOOKUP_ELEM, _element(count_map, key, value))
    return struct.unpack("=I", value.raw)[0]


def fill_slot(slots_map: int, slot: int, sock_fd: int) -> None:
    """Put the listening socket ``sock_fd`` (of the map's group) in ``slot``."""
    _update(slots_map, slot, struct.pack("=Q", sock_fd))


def empty_slot(slots_map: int, slot: int) -> None:
    """Empty ``slot``; an already empty one (its socket closed) is fine."""
    key = ctypes.create_string_buffer(struct.pack("=I", slot))
    try:
        bpf(MAP_DELETE_ELEM, _element(slots_map, key, None))
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _update(map_fd: int, key: int, value: bytes) -> None:
    key_buffer = ctypes.create_string_buffer(struct.pack("=I", key))
    value_buffer = ctypes.create_string_buffer(value)
    bpf(MAP_UPDATE_ELEM, _element(map_fd, key_buffer, value_buffer))


def _element(map_fd: int, key: ctypes.Array, value: ctypes.Array | None) -> bytes:
    """The map_fd/key/value/flags part of union bpf_attr (flags 0: BPF_ANY)."""
    address = 0 if value is None else ctypes.addressof(value)
    return struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(key), address, 0)
