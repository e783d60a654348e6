"""Stop a worker's whole process tree: its process group and the descendants that left it.

Each worker leads its own process group, so ``killpg`` reaches everything it
forked, except descendants that called setsid()/setpgid() to leave the group
(Circus orphans those, issues #1044 and #1092). A `ProcessTree` therefore also
holds a pidfd on every descendant it has seen (from
``/proc/PID/task/*/children``): a pidfd names one process for good, so a
recycled pid is never signalled, and it becomes readable when that process
exits, so waiting for the tree to vanish needs no polling.

Descendants are listed before each signal and once the leader has exited, by
walking down from the leader (while it lives) and from the members already
known. When the leader exits, its children are re-parented to the supervisor
(a child subreaper), where the walk cannot reach those it never saw: the
members of the leader's group among the supervisor's own children are then
looked up too (`OrphanSearch`), unless the group is empty. That lookup reads
the supervisor's list of children, which costs milliseconds with thousands of
workers, so it is never made while the leader lives, and one read serves every
tree that needs it in a burst: a stop of n workers stays O(n).
(A descendant that left the group and lost its parents before it was ever
listed can no longer be told apart from the supervisor's other orphans: the
workers share the supervisor's session, see `chapiteau.supervisor.children.spawn`.
Nor can one whose in-group parent was orphaned while the leader lived and
exits before the leader does: killpg reaches that parent, the search finds it
only if it outlives the leader.)

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
import time
from collections.abc import Container, Iterable

from chapiteau.supervisor.children.child_exit import kill_process_group

_CHUNK = 65536
SEARCH_SHARE = 0.25
"""The share of the loop's time that orphan searches may take (see `OrphanSearch`)."""


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


def group_lives(group: int) -> bool:
    """Whether process group ``group`` has a member (one we may not signal counts)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class OrphanSearch:
    """The supervisor's own children that are not workers, by process group: where the
    members of an exited leader's group that the walk never saw went.

    The kernel walks its list of the supervisor's children again for every page
    of ``/proc/PID/task/TID/children`` it gives, so one read costs tens of
    milliseconds with thousands of workers (31 ms at 6,526). One read therefore
    serves every tree that asks before it is made: it runs on a timer, after
    what is ready already (the other exits of the same burst ask meanwhile),
    and after a search that took ``d`` seconds of CPU the next waits until
    ``d / SEARCH_SHARE`` after it, so a stop of thousands of workers reads the
    list a few times, not once per worker. Group ids are read only for the
    children that are not ``workers``.
    """

    def __init__(self, workers: Container[int]) -> None:
        self.workers = workers
        self._pending: asyncio.Future[dict[int, list[int]]] | None = None
        self._next = 0.0
        """Loop time before which no search starts (see SEARCH_SHARE)."""

    async def in_group(self, group: int) -> list[int]:
        """The supervisor's children in process group ``group``, workers aside, as a
        search that starts after this call finds them."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            loop.call_at(max(self._next, loop.time()), self._search, loop)
        groups = await asyncio.shield(self._pending)
        return groups.get(group, [])

    def _search(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None
        began = time.thread_time()
        groups: dict[int, list[int]] = {}
        for pid in children(os.getpid()):
            if pid in self.workers:
                continue
            ids = group_and_session(pid)
            if ids is not None:
                groups.setdefault(ids[0], []).append(pid)
        self._next = loop.time() + (time.thread_time() - began) / SEARCH_SHARE
        if not pending.done():
            pending.set_result(groups)


class ProcessTree:
    """A worker (the leader, a child of this process) and every descendant seen so far."""

    def __init__(self, leader: int, orphans: OrphanSearch) -> None:
        """``orphans``: where to look for the leader's group once it has exited."""
        self.leader = leader
        self.orphans = orphans
        self._members: dict[int, int] = {}

    async def refresh(self, leader_alive: bool) -> None:
        """Take hold of descendants that appeared since the last look.

        ``leader_alive``: the leader is not reaped yet (its pid cannot name another
        process). Once it is, the supervisor's children in its group are looked up
        too, if the group still has members; the look waits for a shared search.
        """
        roots = [self.leader] if leader_alive else []
        roots.extend(self.alive())
        if not leader_alive and group_lives(self.leader):
            roots.extend(await self.orphans.in_group(self.leader))
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
        program may read a second SIGINT or SIGTERM as "stop now". Call `refresh`
        first to reach the descendants that appeared since the last look.
        """
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
