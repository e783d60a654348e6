"""Read worker pipes on the event loop and feed the streams.

Theory of operation: each pipe's read end is registered with ``loop.add_reader``;
a wake-up reads at most ``READ_SIZE`` bytes, hands them to the pipe's stream
as a Circus chunk and returns, so a chatty worker gets one read per loop turn
and cannot starve timers, pidfds or the control endpoint. End of file closes
the pipe. A stream that raises is logged and the pipe is still read, so one
full disk cannot stop the supervisor.

A chunk never ends inside a UTF-8 character: up to three bytes of an
unfinished character wait for the next read (or end of file), so that text
split by a read is not turned into two replacement characters by the stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from chapiteau.supervisor.io.streams import Chunk

log = structlog.get_logger(__name__)

READ_SIZE = 64 * 1024
# How much remove_pid still reads from a pipe: a dead worker's pipe holds at
# most one pipe buffer, but a surviving grandchild could keep writing forever.
DRAIN_LIMIT = 16 * READ_SIZE


def split_incomplete_utf8(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` into what can be decoded now and an unfinished last character.

    The tail is non-empty only when ``data`` ends with the first 1-3 bytes of
    a multi-byte UTF-8 character; anything else (ASCII, binary garbage) is
    returned whole, as the decoder treats it the same whatever follows.
    """
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the character started earlier
        if 0xC2 <= byte <= 0xDF:
            needed = 2
        elif 0xE0 <= byte <= 0xEF:
            needed = 3
        elif 0xF0 <= byte <= 0xF4:
            needed = 4
        else:
            needed = 1
        if back < needed:
            return data[:-back], data[-back:]
        break
    return data, b""


@dataclass(slots=True)
class _Pipe:
    """One redirected pipe; ``pending`` holds an unfinished UTF-8 character."""

    pid: int
    name: str
    stream: Callable[[Chunk], None]
    pending: bytes = b""
    failures: int = 0


class Redirector:
    """Feed the output of worker pipes to their streams from the asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pipes: dict[int, _Pipe] = {}
        self._fds_of: dict[int, list[int]] = {}
        """The fds of each pid: an exit among thousands of workers finds its own at once."""

    def add(self, fd: int, pid: int, name: str, stream: Callable[[Chunk], None]) -> None:
        """Read the pipe ``fd`` of process ``pid`` into ``stream``; the redirector now owns fd.

        ``name`` is "stdout" or "stderr". The fd is made non-blocking and
        close-on-exec, so it never leaks into a worker spawned later.
        """
        if fd in self._pipes:
            raise ValueError(f"fd {fd} is already redirected")
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._pipes[fd] = _Pipe(pid, name, stream)
        self._fds_of.setdefault(pid, []).append(fd)
        self._loop.add_reader(fd, self._read, fd)

    def remove_pid(self, pid: int) -> None:
        """Deliver what the process ``pid`` has left in its pipes, then close them."""
        for fd in sorted(self._fds_of.get(pid, ())):
            self._drain(fd)

    def close(self) -> None:
        """Deliver what is left in every pipe, then close them all."""
        for fd in list(self._pipes):
            self._drain(fd)

    def _drain(self, fd: int) -> None:
        budget = DRAIN_LIMIT
        while fd in self._pipes and budget > 0:
            read = self._read(fd)
            if not read:
                break
            budget -= read
        if fd in self._pipes:
            self._forget(fd)

    def _read(self, fd: int) -> int:
        """Read once from ``fd`` and deliver it; the number of bytes read (0: nothing more now)."""
        pipe = self._pipes[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return 0
        except OSError as exc:
            log.error("pipe_read_failed", pid=pipe.pid, name=pipe.name, error=str(exc))
            self._forget(fd)
            return 0
        if not data:
            self._forget(fd)
            return 0
        ready, pipe.pending = split_incomplete_utf8(pipe.pending + data)
        if ready:
            self._deliver(pipe, ready)
        return len(data)

    def _forget(self, fd: int) -> None:
        pipe = self._pipes.pop(fd)
        fds = self._fds_of[pipe.pid]
        fds.remove(fd)
        if not fds:
            del self._fds_of[pipe.pid]
        self._loop.remove_reader(fd)
        os.close(fd)
        if pipe.pending:
            self._deliver(pipe, pipe.pending)

    def _deliver(self, pipe: _Pipe, data: bytes) -> None:
        try:
            pipe.stream({"data": data, "pid": pipe.pid, "name": pipe.name})
        except Exception as exc:  # a stream is user-configurable code; it must not stop the loop
            pipe.failures += 1
            # Once per run of failures: a full disk would otherwise log every chunk.
            if pipe.failures == 1:
                log.error(
                    "stream_write_failed",
                    pid=pipe.pid,
                    name=pipe.name,
                    stream=type(pipe.stream).__name__,
                    error=repr(exc),
                )
        else:
            if pipe.failures:
                log.warning(
                    "stream_write_recovered",
                    pid=pipe.pid,
                    name=pipe.name,
                    lost_chunks=pipe.failures,
                )
                pipe.failures = 0
