"""Crash-loop backoff of one watcher: how long to wait before the next respawn.

Theory of operation. A watcher spawns its processes in rounds: the start, then
each respawn that brings the count back to ``numprocesses``. A round fails when
one of its processes dies sooner than ``window`` seconds after its spawn (a
crash); the other crashes of that round are part of the same failure. The delay
before the next respawn grows with consecutive failed rounds, never with the
number of processes that crashed, so a watcher of 8 processes backs off exactly
as a watcher of 1::

    failed rounds   1     2      3      4     ...  n
    delay           0 s   0.1 s  0.2 s  0.4 s ...  min(0.1 * 2 ** (n - 2), 60) s

A process that dies after living ``window`` seconds or more ends the streak, so
once the cause of the crashes goes away, the watcher serves again at the next
respawn, at most one (then-current) delay later. With ``max_retry`` >= 0
(``[plugin:flapping] max_retry``), the watcher is given up on when its backoff
rounds (the failed rounds after the first) exceed it.

Pure: no I/O and no clock; the watcher tells each exit's round and age.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 60.0


def backoff(attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...): 0.1 s doubling, at most 60 s."""
    return min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)


@dataclass(frozen=True)
class Respawn:
    """What to do after a process exited: respawn after ``delay`` seconds."""

    delay: float
    failed_rounds: int
    new_failure: bool
    """True when this exit made its round a failed one (the first crash of the round)."""


@dataclass
class CrashRounds:
    """Counts the consecutive failed rounds of one watcher."""

    failed: int = 0
    """Consecutive failed rounds; a process spawned now belongs to round ``failed``."""

    @property
    def current(self) -> int:
        """The round of a process spawned now."""
        return self.failed

    def reset(self) -> None:
        """The watcher starts afresh (``start``): no streak."""
        self.failed = 0

    def exited(self, spawned_in: int, age: float, window: float, max_retry: int) -> Respawn | None:
        """A process of round ``spawned_in`` exited after ``age`` seconds; None: give up."""
        if age >= window:
            self.failed = 0
            return Respawn(0.0, 0, new_failure=False)
        new_failure = spawned_in >= self.failed
        if new_failure:
            self.failed += 1
        retries = self.failed - 1
        if new_failure and 0 <= max_retry < retries:
            return None
        return Respawn(backoff(retries) if retries else 0.0, self.failed, new_failure)
