"""One running worker process as the driver sees it: pid, wid, start time, exit future.

Its place in the watcher's life (running, stopping, its crash round) is the
lifecycle's (`chapiteau.supervisor.lifecycle.Worker`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class Process:
    """A worker the watcher spawned and has not yet seen exit."""

    pid: int
    wid: int
    exited: asyncio.Future[int]
    """Resolved with the exit code (-signum when killed) when the process is reaped."""
    started: float = field(default_factory=time.time)
    """Epoch seconds, as Circus reports it."""
    max_age_timer: asyncio.TimerHandle | None = None
    held: tuple[str, ...] = ()
    """The broker keys of its output pipes, released once it is gone."""
    record: bytes = b""
    """Its part of the snapshot for the next supervisor (`chapiteau.supervisor.state`)."""

    def cancel_timers(self) -> None:
        if self.max_age_timer is not None:
            self.max_age_timer.cancel()
            self.max_age_timer = None
