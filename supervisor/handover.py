"""Hand the running workers from one supervisor generation to the next, through the broker.

Only a supervisor the broker started (spawn mode) has one: its workers become
the broker's children when it dies, and the broker starts its successor at
once. What the successor needs is kept by the broker, which never reads it:

* each worker's stdout/stderr pipe is made by the broker (``hold_pipes``),
  which keeps a copy of the read end under a key, so that a worker writing
  while no supervisor exists blocks on a full pipe at worst, never gets
  SIGPIPE; the key is released when the worker is gone. The pipes are made
  ahead, a batch per request (`POOL`), so that a spawn takes one ready;
* the snapshot (`chapiteau.supervisor.state`), with the NOTIFY_SOCKET's
  address that the workers keep in their environment, is written into memfds the
  broker holds, once per burst of changes: `Handover.changed` schedules one
  write with ``loop.call_soon``. A snapshot grows with the processes, so a
  start of thousands would write one per spawn and cost O(n²); after a write
  that took ``d`` seconds, the next waits until ``d / WRITE_SHARE`` after it
  (a one-shot ``call_at``, armed only when something changed): snapshots never
  take more than that share of the loop's time, and a start of n processes
  stays O(n). What a killed supervisor did not write yet is at most that
  delay old (milliseconds at 10,000 processes): its successor stops those
  unrecorded workers gracefully and replaces them. A control command's change
  is written before its reply goes out (`Handover.flush`): what an operator
  was told happened survives a kill -9 right after. Nothing is written while
  the previous generation's snapshot is being adopted (it stays whole should
  this supervisor die meanwhile), nor once the supervisor quits (its own
  stop of the watchers is no operator's).

At start, `Handover.take` gets back the snapshot and the pipes, `claim`
checks that a recorded process is still the same one (a child of the broker
with the recorded start time, pinned by a pidfd), and `retire` stops
gracefully what cannot be adopted. `orphans` finds the broker's children
that the snapshot does not know, by the marker every worker carries in its
environment (``CHAPITEAU_WATCHER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import structlog

from chapiteau.protocol.broker_messages import MAX_HELD_PER_REPLY
from chapiteau.protocol.constants import INSTANCE_VARIABLE
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError
from chapiteau.supervisor.children.child_exit import kill_process_group
from chapiteau.supervisor.children.process_tree import (
    group_and_session,
    parent_of,
    read_proc,
    start_time,
)
from chapiteau.supervisor.state import (
    STATE_KEYS,
    ProcessRecord,
    Snapshot,
    WatcherRecord,
    encode,
    newest,
)

log = structlog.get_logger("chapiteau.supervisor")

WRITE_SHARE = 0.1
"""At most this share of the loop's time goes into writing snapshots."""

POOL = 64
"""Output pipes the broker makes ahead, in one request, for the next spawns: neither a
respawn nor a start waits for a round trip to the broker per worker. Unused ones are held
by the broker like the others (at most this many more than the workers use, within
``max_held_fds``), and the next generation releases them with the leftovers."""

WATCHER_VARIABLE = "CHAPITEAU_WATCHER"
"""Set in every worker's environment to its watcher's name: marks it as ours."""

Pipe = tuple[int, int, str | None]
"""A worker's output pipe: (read end, write end, the broker's key or None)."""


def local_pipe() -> Pipe:
    """A pipe the broker does not hold (connect mode, or a broker that refused)."""
    read, write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read, False)
    return read, write, None


def markers(name: str) -> dict[str, str]:
    """The variables that mark a worker of watcher ``name`` (see `orphans`): its name, and
    the broker's CHAPITEAU_INSTANCE (this supervisor's), by which a broker started again
    after a crash finds it (docs/zero-downtime.md)."""
    instance = os.environ.get(INSTANCE_VARIABLE)
    return {WATCHER_VARIABLE: name} | ({} if instance is None else {INSTANCE_VARIABLE: instance})


class Handover:
    """The supervisor's side of what the broker holds for its next generation."""

    def __init__(
        self,
        broker: BrokerClient,
        loop: asyncio.AbstractEventLoop,
        snapshot: Callable[[], Iterable[tuple[WatcherRecord, Iterable[bytes]]]],
        tag: str,
        notify_socket: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``snapshot`` lists each watcher with its processes' encoded parts; ``tag`` makes
        this generation's pipe keys unique (the broker's count of supervisor starts);
        ``notify_socket`` gives the address of the open NOTIFY_SOCKET, if any."""
        self.broker = broker
        self.loop = loop
        self._snapshot = snapshot
        self._notify_socket = notify_socket
        self._tag = tag
        self._pipes_made = 0
        self.pool: deque[Pipe] = deque()
        """Pipes the broker made and holds, for the next spawns (see POOL)."""
        self._fill_scheduled: asyncio.Handle | None = None
        self.ahead = True
        """Whether pipes are made ahead: not after the broker refused some (near
        ``max_held_fds``), until a release made room, so that it does not refuse (and
        log) again at each spawn."""
        self._releasing: list[str] = []
        """Keys to release, sent together (see `release`)."""
        self._release_scheduled: asyncio.Handle | None = None
        self._memfds: dict[str, int] = {}
        self._serial = 0
        self._scheduled: asyncio.Handle | None = None
        self._next_write = 0.0
        """Loop time before which no snapshot is written (see WRITE_SHARE)."""
        self.writes = 0
        self.paused = True
        """No writes: the snapshot of the previous generation is being adopted (until
        `resume`), or this supervisor quits (`pause`)."""
        self._missed = False

    def pipes(self, names: Iterable[str]) -> dict[str, Pipe]:
        """An output pipe per stream name, held by the broker (local ones if it refuses).

        Taken from the pool when it has enough (the usual case: no broker round
        trip), else asked for now; the pool is filled again once what is ready has
        run, so that a respawn never waits for the broker.
        """
        names = list(names)
        if len(self.pool) < len(names):
            try:
                self._fill(len(names))
            except BrokerError as exc:
                log.warning("pipes_not_held", error=str(exc))
                return {name: local_pipe() for name in names}
        pipes = {name: self.pool.popleft() for name in names}
        if self.ahead and len(self.pool) < POOL // 2 and self._fill_scheduled is None:
            self._fill_scheduled = self.loop.call_at(self.loop.time(), self._fill_later)
        return pipes

    def _fill(self, least: int) -> None:
        """Have the broker make pipes for the pool: up to POOL in it, ``least`` at the very
        least (all it asks for when the broker refuses more, near ``max_held_fds``)."""
        wanted = min(MAX_HELD_PER_REPLY, max(least, POOL - len(self.pool)))
        if not self.ahead:
            wanted = least
        try:
            self.pool.extend(self._hold(wanted))
        except BrokerError:
            self.ahead = False
            if wanted <= least:
                raise
            self.pool.extend(self._hold(least))

    def _fill_later(self) -> None:
        self._fill_scheduled = None
        # A refusal here is told by the next spawn that finds the pool empty.
        with contextlib.suppress(BrokerError):
            self._fill(0)

    def _hold(self, count: int) -> list[Pipe]:
        keys = []
        for _ in range(count):
            self._pipes_made += 1
            keys.append(f"pipe.{self._tag}.{self._pipes_made}")
        fds = self.broker.hold_pipes(keys) if keys else []
        for read, _ in fds:
            os.set_blocking(read, False)
        return [(read, write, key) for key, (read, write) in zip(keys, fds, strict=True)]

    def release(self, keys: Iterable[str]) -> None:
        """Let the broker close these pipes. Sent once what is ready has run (an exit's
        respawn does not wait for the broker), all the keys of a burst together, in
        requests of at most MAX_HELD_PER_REPLY keys."""
        self._releasing.extend(keys)
        if self._releasing and self._release_scheduled is None:
            self._release_scheduled = self.loop.call_at(self.loop.time(), self._send_releases)

    def _send_releases(self) -> None:
        self._release_scheduled = None
        keys, self._releasing = self._releasing, []
        self.ahead = True
        for start in range(0, len(keys), MAX_HELD_PER_REPLY):
            batch = tuple(keys[start : start + MAX_HELD_PER_REPLY])
            try:
                self.broker.release(batch)
            except BrokerError as exc:
                log.warning("release_failed", keys=list(batch), error=str(exc))

    def resume(self) -> None:
        """Adoption is over: from now on each change is written (one is due if any came)."""
        self.paused = False
        if self._missed:
            self._missed = False
            self.changed()

    def pause(self) -> None:
        """Keep the last snapshot as it is: the supervisor stops its watchers because it
        quits, which is no operator's ``stop``, and the next generation starts them again."""
        self.paused = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    def changed(self) -> None:
        """Something the snapshot shows changed: write it once the current burst is over."""
        if self.paused:
            self._missed = True
        elif self._scheduled is None:
            # A timer even when due now: it runs after what is ready already, so that a
            # respawn the same exit scheduled is not kept waiting by the write.
            self._scheduled = self.loop.call_at(max(self._next_write, self.loop.time()), self.write)

    def flush(self) -> None:
        """Write now a change not written yet (before a command's reply goes out)."""
        if self._scheduled is not None:
            self.write()

    def write(self) -> None:
        """Write the snapshot now, into the memfd that does not hold the newest one."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._serial += 1
        key = STATE_KEYS[self._serial % len(STATE_KEYS)]
        try:
            fd = self._memfds.get(key)
            if fd is None:
                fd = self._memfds[key] = self.broker.hold_memfd(key)
            # CPU time: a busy machine that descheduled us must not space the writes out.
            began = time.thread_time()
            data = encode(self._serial, self._snapshot(), self._notify_socket())
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except (BrokerError, OSError) as exc:
            log.warning("state_not_written", error=str(exc))
            return
        self.writes += 1
        self._next_write = self.loop.time() + (time.thread_time() - began) / WRITE_SHARE

    def take(self) -> tuple[Snapshot | None, dict[str, int]]:
        """What the previous generation left: its newest snapshot, and the held pipes'
        read ends by key (ours now: close them, or release their keys)."""
        held = self.broker.take_held()
        for key in STATE_KEYS:
            if key in held:
                self._memfds[key] = held.pop(key)
        snapshot = newest(_read_all(fd) for fd in self._memfds.values())
        if snapshot is not None:
            self._serial = snapshot.serial
        for fd in held.values():
            os.set_blocking(fd, False)
        return snapshot, held


def claim(record: ProcessRecord, broker: int) -> int | None:
    """A pidfd on the recorded process if it still runs as a child of the broker (pid
    ``broker``), with the recorded start time; None otherwise (it exited, or the pid is
    another process now)."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except OSError:
        return None
    # Checked after the pidfd is open: a pid recycled before that has another start time.
    if parent_of(record.pid) != broker or start_time(record.pid) != record.starttime:
        os.close(pidfd)
        return None
    return pidfd


def orphans(known: set[int], broker: int) -> Iterator[tuple[int, int, str]]:
    """(pid, pidfd, watcher name) of each child of the broker (pid ``broker``) that is one
    of our workers (it carries our markers) and is not in ``known``."""
    instance = os.environ.get(INSTANCE_VARIABLE, "")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known or int(entry) == os.getpid():
            continue
        pid = int(entry)
        if parent_of(pid) != broker:
            continue
        environ = _environ(pid)
        if WATCHER_VARIABLE not in environ or environ.get(INSTANCE_VARIABLE, "") != instance:
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        if parent_of(pid) != broker:
            os.close(pidfd)
            continue
        yield pid, pidfd, environ[WATCHER_VARIABLE]


async def retire(pid: int, pidfd: int, signum: int, timeout: float) -> None:
    """Stop a worker nobody manages: ``signum`` to its group, SIGKILL after ``timeout``.

    It is the broker's child: the broker reaps it, its pidfd says when it is gone.
    """
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
    try:
        _signal_group(pid, pidfd, signum)
        try:
            await asyncio.wait_for(asyncio.shield(gone), timeout)
        except TimeoutError:
            log.warning("orphan_kill_escalated", pid=pid, after=timeout)
            _signal_group(pid, pidfd, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(gone), timeout)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    log.info("orphan_stopped", pid=pid)


def _signal_group(pid: int, pidfd: int, signum: int) -> None:
    """The group the process leads, while it lives (its pid is then not recycled); the
    process alone when it leads none (a worker's orphaned descendant). Once each."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, 0)
        ids = group_and_session(pid)
        if ids is not None and ids[0] == pid:
            kill_process_group(pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)


def _environ(pid: int) -> dict[str, str]:
    try:
        data = read_proc(f"/proc/{pid}/environ")
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in data.split(b"\0") if item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def _read_all(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)
