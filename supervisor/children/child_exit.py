"""Wake the event loop the moment a child exits.

Theory of operation. Each watched worker gets a pidfd registered with
``loop.add_reader``: the kernel makes it readable when the process exits, so
the loop wakes at once with no polling timer. A SIGCHLD handler
(``loop.add_signal_handler``) schedules a reaping pass with ``waitpid(-1, WNOHANG)``
that collects every zombie: watched pids are dispatched exactly like the pidfd
path, anything else (orphaned grandchildren re-parented to us as a child
subreaper, or a child nobody watched) is reaped so no zombie stays behind.
Each ``waitpid(-1)`` walks the kernel's list of the supervisor's children (0.5 ms
at 6,000 workers), so the pass is not run once per SIGCHLD: it runs on a timer,
after what is ready already (a worker's exit, read from its pidfd, and its
respawn first), once for every SIGCHLD of a burst, and after a pass that took
``d`` seconds of CPU the next waits until ``d / REAP_SHARE`` after it.

Both paths run on the loop's thread and the kernel hands each zombie to exactly
one ``waitpid``, so whichever path reaps a pid first reports it and the other
never sees it: ``on_exit`` is called exactly once per watched pid. The price of
the global pass is that it also reaps children forked by other code in this
process; every child of the supervisor must therefore be started with
`chapiteau.supervisor.children.spawn.spawn` and registered with `ChildWatcher.watch`
before the loop runs again.

An adopted worker (`watch_adopted`: a worker of the previous supervisor
generation, now the broker's child) wakes the loop through its pidfd too, but
the broker reaps it: its exit is reported with the code None (unknown).

Signals go through the pidfd (``pidfd_send_signal``), so a pid that has been
reaped and recycled is never hit. `kill_process_group` signals a worker's
process group (each worker leads its own, after setpgid): the
group id is the worker's pid, which the kernel cannot hand to another process
while the worker is unreaped or while any member of its group is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import prctl

# What asyncio reports when another waiter already consumed a child's status.
UNKNOWN_EXIT_CODE = 255
REAP_SHARE = 0.25
"""The share of the loop's time that SIGCHLD reaping passes may take."""


def become_subreaper() -> None:
    """Make this process adopt its descendants' orphans (PR_SET_CHILD_SUBREAPER)."""
    prctl.set_child_subreaper(True)


def quiet_signal_wakeup() -> None:
    """Let the loop's signal wake-up fd drop bytes silently when it is full.

    asyncio's ``add_signal_handler`` sets the wake-up fd with Python's default,
    which prints "Exception ignored when trying to write to the signal wakeup fd"
    for every signal that finds it full: a storm of SIGCHLD at 1,000 workers
    filled the supervisor's log with them. Nothing is lost with the byte: every
    watched exit is read from its own pidfd, and a dropped SIGCHLD byte means
    unread ones are still queued, so the reaping pass they trigger runs after
    it and collects that zombie too. Call it after the last
    ``add_signal_handler`` (each one resets the setting), on the loop's thread.
    Signals are blocked while the fd is set again, so none arrives in between.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def kill_process_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid``; a gone group is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


class ChildWatcher:
    """Report each watched child's exit to ``on_exit(pid, exit_code)`` and reap orphans.

    ``on_exit`` and ``on_orphan`` are scheduled with ``loop.call_soon``, so one
    failing callback cannot stop a reaping pass. Create, use and close it on the
    loop's thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[int, int | None], None],
        on_orphan: Callable[[int, int], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_exit = on_exit
        self._on_orphan = on_orphan
        self._pidfds: dict[int, int] = {}
        self._adopted: set[int] = set()
        """Watched pids that are not our children (their exit code is not ours to read)."""
        self._pass: asyncio.TimerHandle | None = None
        self._next_pass = 0.0
        """Loop time before which no reaping pass starts (see REAP_SHARE)."""
        loop.add_signal_handler(signal.SIGCHLD, self._reap_soon)

    def watch(self, pid: int) -> None:
        """Report ``pid``'s exit; ``pid`` must be an unreaped child of this process."""
        if pid in self._pidfds:
            return
        pidfd = os.pidfd_open(pid)
        try:
            # WNOWAIT peeks without reaping: it fails for a pid that is not our
            # child, e.g. one that was already reaped and recycled.
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            os.close(pidfd)
            raise ValueError(f"pid {pid} is not an unreaped child of this process") from None
        self._pidfds[pid] = pidfd
        self._loop.add_reader(pidfd, self._pidfd_readable, pid)

    def watch_adopted(self, pid: int, pidfd: int) -> None:
        """Report the exit of ``pid``, not our child, through ``pidfd`` (now owned here)."""
        self._pidfds[pid] = pidfd
        self._adopted.add(pid)
        self._loop.add_reader(pidfd, self._pidfd_readable, pid)

    def watched(self) -> frozenset[int]:
        """The pids whose exit has not been reported yet."""
        return frozenset(self._pidfds)

    def send_signal(self, pid: int, signum: int) -> bool:
        """Signal a watched child through its pidfd; False if it has exited or is not watched."""
        pidfd = self._pidfds.get(pid)
        if pidfd is None:
            return False
        if (
            pid not in self._adopted
            and os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        ):
            return False
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def _reap_soon(self) -> None:
        """SIGCHLD: one reaping pass for the burst, after what is ready (see the module)."""
        if self._pass is None:
            self._pass = self._loop.call_at(
                max(self._next_pass, self._loop.time()), self._reap_pass
            )

    def _reap_pass(self) -> None:
        self._pass = None
        began = time.thread_time()
        self.reap()
        self._next_pass = self._loop.time() + (time.thread_time() - began) / REAP_SHARE

    def reap(self) -> None:
        """Reap every exited child now: report watched ones, pass the rest to on_orphan."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Circus's convention: the exit status, or -signum if killed by a signal.
            code = os.waitstatus_to_exitcode(status)
            if pid in self._pidfds:
                self._finish(pid, code)
            elif self._on_orphan is not None:
                self._loop.call_soon(self._on_orphan, pid, code)

    def close(self) -> None:
        """Stop watching: remove the SIGCHLD handler and every pidfd (children are left alone)."""
        self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._pass is not None:
            self._pass.cancel()
            self._pass = None
        for pid in list(self._pidfds):
            self._forget(pid)

    def _pidfd_readable(self, pid: int) -> None:
        if pid in self._adopted:
            self._finish(pid, None)
            return
        try:
            result = os.waitid(os.P_PIDFD, self._pidfds[pid], os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Consumed by a waitpid outside this class; the status is lost.
            self._finish(pid, UNKNOWN_EXIT_CODE)
            return
        if result is None:
            return
        if result.si_code == os.CLD_EXITED:
            self._finish(pid, result.si_status)
        else:
            self._finish(pid, -result.si_status)

    def _finish(self, pid: int, code: int | None) -> None:
        self._forget(pid)
        self._loop.call_soon(self._on_exit, pid, code)

    def _forget(self, pid: int) -> None:
        pidfd = self._pidfds.pop(pid)
        self._adopted.discard(pid)
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
