"""One running worker process as the driver sees it: pid, wid, start time, exit and
readiness futures, its timers, its doors (`chapiteau.supervisor.doors`).

Its place in the watcher's life (running, stopping, its crash round) is the
lifecycle's (`chapiteau.supervisor.lifecycle.Worker`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from chapiteau.supervisor.children.process_tree import start_time
from chapiteau.supervisor.doors import Doors
from chapiteau.supervisor.state import ProcessRecord, decode_process, encode_process


@dataclass(eq=False, slots=True)
class Process:
    """A worker the watcher spawned and has not yet seen exit."""

    pid: int
    wid: int
    exited: asyncio.Future[int | None]
    """Resolved with the exit code (-signum when killed) when the process is reaped; None
    for an adopted process, which the broker reaps."""
    ready: asyncio.Future[str | None]
    """Resolved with None once the process is ready, or with why it never will be."""
    started: float = field(default_factory=time.time)
    """Epoch seconds, as Circus reports it."""
    max_age_timer: asyncio.TimerHandle | None = None
    timers: dict[Any, asyncio.TimerHandle] = field(default_factory=dict)
    """The readiness timers, by `chapiteau.supervisor.lifecycle.Timer`."""
    failed_stop: asyncio.Task[None] | None = None
    """The stop of a process that missed its ready_timeout or watchdog, under way."""
    held: tuple[str, ...] = ()
    """The broker keys of its output pipes, released once it is gone."""
    record: bytes = b""
    """Its part of the snapshot for the next supervisor (`chapiteau.supervisor.state`)."""
    unrecorded: ProcessRecord | None = None
    """A new process's record until `snapshot_part` encodes it (its start time read then)."""
    siblings: dict[Doors, int] = field(default_factory=dict)
    """Its own ``so_reuseport`` sockets (the supervisor's copies), by the `Doors` of the
    socket they were bound for, until its doors open."""
    doors: dict[Doors, int] = field(default_factory=dict)
    """The steering slot its socket holds in each socket's `Doors`, while its door is open
    (the `Doors` object, not the socket's name: a reload may give the name new maps)."""

    def snapshot_part(self) -> bytes:
        """Its part of the snapshot, encoded once. A new process's kernel start time is read
        here, at the first snapshot after its spawn, not at the spawn: reading
        /proc/PID/stat waits until the process's exec has closed the supervisor's
        close-on-exec fds (6 ms with 18,000 of them), which it does meanwhile on
        another CPU."""
        if self.unrecorded is not None:
            starttime = start_time(self.pid) or 0
            self.record = encode_process(replace(self.unrecorded, starttime=starttime))
            self.unrecorded = None
        return self.record

    def cancel_timers(self) -> None:
        if self.max_age_timer is not None:
            self.max_age_timer.cancel()
            self.max_age_timer = None
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    def record_doors(self) -> None:
        """Put its current `doors` in its part of the snapshot."""
        doors = {door.name: slot for door, slot in self.doors.items()}
        if self.unrecorded is not None:
            self.unrecorded = replace(self.unrecorded, doors=doors)
        elif self.record:
            self.record = encode_process(replace(decode_process(self.record), doors=doors))

    def resolve_ready(self, why_not: str | None) -> None:
        """Say the process is ready (``why_not`` None) or never will be, once."""
        if not self.ready.done():
            self.ready.set_result(why_not)
