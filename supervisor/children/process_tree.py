"""Stop a worker's whole process tree: its process group and the descendants that left it.

Each worker leads its own process group, so ``killpg`` reaches everything it
forked, except descendants that called setsid()/setpgid() to leave the group
(Circus orphans those, issues #1044 and #1092). A `ProcessTree` therefore also
holds a pidfd on every descendant it has seen (from
``/proc/PID/task/*/children``): a pidfd names one process for good, so a
recycled pid is never signalled, and it becomes readable when that process
exits, so waiting for the tree to vanish needs no polling.

Descendants are listed when the tree is built and again before each signal.
Once the leader has exited its children are re-parented to the supervisor (a
child subreaper), so the listing then also walks the known members'
descendants and the supervisor's own children that are in the leader's group.
(A descendant that left the group and lost its parents before it was ever
listed can no longer be told apart from the supervisor's other orphans: the
workers share the supervisor's session, see `chapiteau.supervisor.children.spawn`.)

The /proc readers it is built on (`stat_fields`, `parent_of`, `start_time`,
`children`) serve the rest of the supervisor too: which worker tree a
notification comes from, whether a process of the previous generation is still
the one recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Container, Iterable

from chapiteau.supervisor.children.child_exit import kill_process_group

_CHUNK = 65536


def read_proc(path: str) -> bytes:
    """A /proc file's content, read without a Python file object (a third of the cost).

    Read to the end: many /proc files (``children`` among them) give at most a
    page per read, so a short read is not the end of the file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (none once it is gone).

    Each thread lists its own children. A task directory with a link count of
    3 (itself, its parent, one thread) holds only the main thread, which saves
    listing it: this runs for every process of every ``stats``.
    """
    found: list[int] = []
    with contextlib.suppress(OSError):
        tasks = f"/proc/{pid}/task"
        for task in [str(pid)] if os.stat(tasks).st_nlink == 3 else os.listdir(tasks):
            with contextlib.suppress(OSError):
                found.extend(map(int, read_proc(f"/proc/{pid}/task/{task}/children").split()))
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, parents before their children."""
    return _subtrees([pid])[1:]


def _subtrees(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live descendant of them, each listed (and walked) once."""
    found = dict.fromkeys(roots)
    pending = list(found)
    while pending:
        for child in children(pending.pop()):
            if child not in found:
                found[child] = None
                pending.append(child)
    return list(found)


def group_and_session(pid: int) -> tuple[int, int] | None:
    """The (process group, session) of ``pid``; None once it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    return int(fields[2]), int(fields[3])


def stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name: [0] is the state, field 3 of
    proc(5), so field N is at N - 3."""
    return read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid``; None once it is gone."""
    try:
        return int(stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


STARTTIME_FIELD = 22
"""proc(5): the time the process started after boot, in clock ticks."""


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks after boot); None once it is gone."""
    try:
        return int(stat_fields(pid)[STARTTIME_FIELD - 3])
    except (OSError, IndexError, ValueError):
        return None


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


class ProcessTree:
    """A worker (the leader, a child of this process) and every descendant seen so far."""

    def __init__(self, leader: int, others: Container[int] = ()) -> None:
        """``others``: pids known to be other workers, which can never be members."""
        self.leader = leader
        self.others = others
        self._members: dict[int, int] = {}
        self.refresh()

    def refresh(self) -> None:
        """Take hold of descendants that appeared since the last look."""
        roots = [self.leader, *self.alive()]
        for pid in children(os.getpid()):
            if pid in self.others:
                continue
            ids = group_and_session(pid)
            if pid != self.leader and ids is not None and ids[0] == self.leader:
                roots.append(pid)
        for pid in _subtrees(roots):
            if pid in self._members or pid == self.leader:
                continue
            try:
                self._members[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue

    def alive(self) -> list[int]:
        """Members (the leader aside) that have not exited."""
        return [pid for pid, pidfd in self._members.items() if not _exited(pidfd)]

    def signal(self, signum: int, leader_alive: bool) -> list[int]:
        """Send ``signum`` once to each process of the tree; return the live members.

        The leader's group gets it by ``killpg``, while its id cannot have been
        recycled (the leader is unreaped or a known member of the group lives);
        members outside the group get it by pidfd. No process gets it twice: a
        program may read a second SIGINT or SIGTERM as "stop now".
        """
        self.refresh()
        alive = self.alive()
        in_group = {pid for pid in alive if (group_and_session(pid) or (0, 0))[0] == self.leader}
        group_signalled = leader_alive or bool(in_group)
        if group_signalled:
            kill_process_group(self.leader, signum)
        for pid in alive:
            if pid in in_group:
                continue
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._members[pid], signum)
        return alive

    async def wait_members(self, timeout: float) -> bool:
        """Wait until every known member has exited; False if some are left after ``timeout``."""
        loop = asyncio.get_running_loop()
        pending = {pid: self._members[pid] for pid in self.alive()}
        if not pending:
            return True
        done = loop.create_future()

        def exited(pid: int) -> None:
            loop.remove_reader(pending.pop(pid))
            if not pending and not done.done():
                done.set_result(None)

        for pid, pidfd in pending.items():
            loop.add_reader(pidfd, exited, pid)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return False
        finally:
            for pidfd in pending.values():
                loop.remove_reader(pidfd)
        return True

    def close(self) -> None:
        for pidfd in self._members.values():
            os.close(pidfd)
        self._members.clear()
