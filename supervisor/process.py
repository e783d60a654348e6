"""One running worker process: its pid, wid, age and the future of its exit."""

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
    crash_round: int = 0
    """The watcher's round of spawns it belongs to (see `chapiteau.supervisor.crash_rounds`)."""
    started: float = field(default_factory=time.time)
    """Epoch seconds, as Circus reports it."""
    started_monotonic: float = field(default_factory=time.monotonic)
    stopping: bool = False
    """Set when the watcher is stopping it on purpose, so its exit is not a crash."""
    max_age_timer: asyncio.TimerHandle | None = None

    @property
    def age(self) -> float:
        return time.monotonic() - self.started_monotonic

    def cancel_timers(self) -> None:
        if self.max_age_timer is not None:
            self.max_age_timer.cancel()
            self.max_age_timer = None
