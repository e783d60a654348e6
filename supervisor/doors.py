"""Which workers of an ``so_reuseport`` socket the kernel sends new connections to.

Each worker of an ``so_reuseport`` socket listens on a socket of its own (the
broker binds one per worker), and the broker attaches to them a program that
sends each new connection to one of the sockets in a map of slots
(`chapiteau.protocol.steering_maps`). A worker's *door* is open while its
socket is in a slot. Doors open when a worker is ready, and close before it
is asked to stop: a worker then stops with nothing accepted and unread, which
a server like uvicorn would otherwise reset as it shuts down. The connections
still waiting in a closed socket's queue when its worker exits move to an open
one (the program migrates them) instead of being reset.

`Doors` keeps the slots of one socket: the lowest free slot for each new
worker, and the count the program probes (one past the highest slot in use).
The maps live in the kernel and outlive a supervisor; its successor gets
them again from the broker and learns which slot each adopted worker holds
from the snapshot (`restore`).
"""

from __future__ import annotations

import heapq
import os

import structlog

from chapiteau.protocol.steering_maps import (
    SLOTS,
    empty_slot,
    fill_slot,
    read_count,
    set_count,
)

log = structlog.get_logger("chapiteau.supervisor.doors")


class Doors:
    """The slots of one ``so_reuseport`` socket's steering maps."""

    __slots__ = ("name", "count_map", "slots_map", "used", "free", "fresh", "count", "warned")

    def __init__(self, name: str, count_map: int, slots_map: int) -> None:
        self.name = name
        self.count_map = count_map
        self.slots_map = slots_map
        self.used: set[int] = set()
        self.free: list[int] = []
        """A heap of the slots below `fresh` that are not used."""
        self.fresh = 0
        """The lowest slot never used."""
        self.count = 0
        self.warned = False

    def open(self, sock_fd: int) -> int | None:
        """Put a worker's socket in the lowest free slot; the slot, or None when all
        `SLOTS` are taken (that worker then gets connections only while no door is open) or
        the maps are closed."""
        if self.count_map < 0:
            return None
        if self.free:
            slot = heapq.heappop(self.free)
        elif self.fresh < SLOTS:
            slot = self.fresh
            self.fresh += 1
        else:
            if not self.warned:
                log.warning("steering_full", socket=self.name, slots=SLOTS)
                self.warned = True
            return None
        try:
            fill_slot(self.slots_map, slot, sock_fd)
        except OSError:
            heapq.heappush(self.free, slot)
            raise
        self.used.add(slot)
        if slot >= self.count:
            self._set_count(slot + 1)
        return slot

    def close(self, slot: int) -> None:
        """Take ``slot``'s worker out: no new connection goes to it. Nothing once the maps
        are closed (a reload gave the socket new ones): the old ones are the kernel's."""
        if slot not in self.used or self.count_map < 0:
            return
        empty_slot(self.slots_map, slot)
        self.used.discard(slot)
        heapq.heappush(self.free, slot)
        if slot == self.count - 1:
            self._set_count(max(self.used, default=-1) + 1)

    def restore(self, slots: set[int]) -> None:
        """A new supervisor: ``slots`` are held by adopted workers; empty any other slot
        the previous one left filled (a worker it spawned but never recorded)."""
        self.count = min(read_count(self.count_map), SLOTS)
        self.used = {slot for slot in slots if 0 <= slot < SLOTS}
        self.fresh = max(self.count, max(self.used, default=-1) + 1)
        self.free = [slot for slot in range(self.fresh) if slot not in self.used]
        for slot in self.free:
            empty_slot(self.slots_map, slot)
        self._set_count(max(self.used, default=-1) + 1)

    def close_maps(self) -> None:
        """Close the maps' fds, for good: their numbers may be reused at once."""
        os.close(self.count_map)
        os.close(self.slots_map)
        self.count_map = self.slots_map = -1
        self.used.clear()

    def _set_count(self, count: int) -> None:
        if count != self.count:
            set_count(self.count_map, count)
            self.count = count
