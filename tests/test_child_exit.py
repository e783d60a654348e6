"""Tests for chapiteau.supervisor.children.child_exit: real children, a real asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine
from typing import Any
from unittest.mock import ANY

import prctl
import pytest

from chapiteau.supervisor.children.child_exit import (
    UNKNOWN_EXIT_CODE,
    ChildWatcher,
    kill_process_group,
)
from chapiteau.supervisor.children.spawn import SpawnSpec, spawn
from tests.waiting import wait_until

PATH = {"PATH": "/usr/bin:/bin"}
TIMEOUT = 5.0


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry))
    return members


def start(*argv: str) -> int:
    return spawn(SpawnSpec(argv=argv, env=PATH))


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class Exits:
    """Collects on_exit / on_orphan calls and lets a test await them."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def __call__(self, pid: int, code: int) -> None:
        self.calls.append((pid, code))
        self._queue.put_nowait((pid, code))

    async def next(self) -> tuple[int, int]:
        return await asyncio.wait_for(self._queue.get(), TIMEOUT)


def run(scenario: Callable[[ChildWatcher, Exits, Exits], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario(watcher, exits, orphans)`` on a fresh loop, closing the watcher after."""

    async def main() -> None:
        exits, orphans = Exits(), Exits()
        watcher = ChildWatcher(asyncio.get_running_loop(), exits, on_orphan=orphans)
        try:
            await scenario(watcher, exits, orphans)
        finally:
            for pid in watcher.watched():
                kill_and_reap(pid)
            watcher.close()

    asyncio.run(main())


def test_sigkilled_child_is_reported_as_minus_nine_by_its_pidfd_not_a_timer() -> None:
    """The exit wakes the loop itself: while the child runs, no timer is armed (the
    loop's own queue of timers, read directly), so nothing polls for it."""

    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        loop: Any = asyncio.get_running_loop()
        pid = start("sleep", "30")
        watcher.watch(pid)
        assert [handle for handle in loop._scheduled if not handle.cancelled()] == []
        os.kill(pid, signal.SIGKILL)
        assert await exits.next() == (pid, -signal.SIGKILL)

    run(scenario)


def test_exit_status_is_reported() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("sh", "-c", "exit 3")
        watcher.watch(pid)
        assert await exits.next() == (pid, 3)

    run(scenario)


def test_each_exit_is_reported_exactly_once() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pids = [start("/bin/true") for _ in range(20)]
        for pid in pids:
            watcher.watch(pid)
        for _ in pids:
            await exits.next()
        await asyncio.sleep(0.05)
        assert sorted(exits.calls) == sorted((pid, 0) for pid in pids)

    run(scenario)


def test_pidfd_alone_wakes_the_loop_without_sigchld() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("sleep", "30")
        watcher.watch(pid)
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        os.kill(pid, signal.SIGTERM)
        assert await exits.next() == (pid, -signal.SIGTERM)

    run(scenario)


def test_sigchld_pass_reports_a_watched_child_and_drops_its_pidfd() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, orphans: Exits) -> None:
        pid = start("/bin/true")
        watcher.watch(pid)
        wait_until(lambda: proc_state(pid) == "Z", what="the child to exit")
        watcher.reap()
        assert watcher.watched() == frozenset()
        assert await exits.next() == (pid, 0)
        await asyncio.sleep(0.05)
        assert (exits.calls, orphans.calls) == ([(pid, 0)], [])

    run(scenario)


def test_unwatched_child_is_reaped_as_an_orphan_without_touching_watched_ones() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, orphans: Exits) -> None:
        watched = start("sleep", "30")
        watcher.watch(watched)
        stray = start("sh", "-c", "exit 4")
        assert await orphans.next() == (stray, 4)
        assert proc_state(stray) is None
        assert watcher.send_signal(watched, signal.SIGKILL)
        assert await exits.next() == (watched, -signal.SIGKILL)

    run(scenario)


def test_send_signal_reaches_the_child_through_its_pidfd() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("sleep", "30")
        watcher.watch(pid)
        assert watcher.send_signal(pid, signal.SIGTERM) is True
        assert await exits.next() == (pid, -signal.SIGTERM)

    run(scenario)


def test_send_signal_to_an_exited_unreaped_child_is_false() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("/bin/true")
        watcher.watch(pid)
        wait_until(lambda: proc_state(pid) == "Z", what="the child to exit")
        assert watcher.send_signal(pid, signal.SIGTERM) is False
        await exits.next()

    run(scenario)


def test_send_signal_after_the_exit_was_reported_is_false() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("/bin/true")
        watcher.watch(pid)
        await exits.next()
        assert watcher.send_signal(pid, signal.SIGTERM) is False

    run(scenario)


def test_child_reaped_behind_the_watchers_back_is_reported_with_unknown_code() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, _: Exits) -> None:
        pid = start("sh", "-c", "exit 4")
        watcher.watch(pid)
        os.waitpid(pid, 0)
        assert await exits.next() == (pid, UNKNOWN_EXIT_CODE)

    run(scenario)


def test_watch_refuses_a_process_that_is_not_our_child() -> None:
    async def scenario(watcher: ChildWatcher, _: Exits, __: Exits) -> None:
        with pytest.raises(ValueError, match="not an unreaped child"):
            watcher.watch(os.getppid())

    run(scenario)


def test_close_releases_pidfds_and_leaves_children_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fds_before = len(os.listdir("/proc/self/fd"))
        watcher = ChildWatcher(loop, lambda pid, code: None)
        pid = start("sleep", "30")
        try:
            watcher.watch(pid)
            watcher.close()
            assert len(os.listdir("/proc/self/fd")) == fds_before
            assert os.waitpid(pid, os.WNOHANG) == (0, 0)
        finally:
            kill_and_reap(pid)

    asyncio.run(main())


def test_kill_process_group_kills_the_workers_descendants() -> None:
    async def scenario(watcher: ChildWatcher, exits: Exits, orphans: Exits) -> None:
        pid = start("sh", "-c", "sleep 30 & sleep 30 & wait")
        watcher.watch(pid)
        wait_until(lambda: len(group_members(pid)) == 3, what="the worker to start two children")
        kill_process_group(pid, signal.SIGKILL)
        assert await exits.next() == (pid, -signal.SIGKILL)
        # The orphaned sleeps come back to us, the subreaper, to be reaped.
        assert [await orphans.next(), await orphans.next()] == [(ANY, -signal.SIGKILL)] * 2
        assert group_members(pid) == []

    prctl.set_child_subreaper(True)
    try:
        run(scenario)
    finally:
        prctl.set_child_subreaper(False)


def test_kill_process_group_of_a_gone_group_is_not_an_error() -> None:
    pid = start("/bin/true")
    os.waitpid(pid, 0)
    kill_process_group(pid, signal.SIGTERM)


SUBREAPER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os
    from chapiteau.supervisor.children.child_exit import ChildWatcher, become_subreaper
    from chapiteau.supervisor.children.spawn import SpawnSpec, spawn

    async def main():
        loop = asyncio.get_running_loop()
        exits, orphans = asyncio.Queue(), asyncio.Queue()
        watcher = ChildWatcher(
            loop, lambda *call: exits.put_nowait(call), lambda *call: orphans.put_nowait(call)
        )
        read_end, write_end = os.pipe()
        worker = spawn(SpawnSpec(
            argv=("sh", "-c", "sleep 0.2 & echo $!"),
            env={"PATH": "/usr/bin:/bin"},
            stdout=write_end,
        ))
        os.close(write_end)
        watcher.watch(worker)
        grandchild = int(os.read(read_end, 100))
        exit = await asyncio.wait_for(exits.get(), 5)
        orphan = await asyncio.wait_for(orphans.get(), 5)
        watcher.close()
        print(json.dumps({
            "worker": worker, "grandchild": grandchild, "exit": exit, "orphan": orphan,
            "left": os.path.exists(f"/proc/{grandchild}"),
        }))

    become_subreaper()
    asyncio.run(main())
    """
)


def run_script(script: str) -> tuple[dict, str]:
    """Run ``script`` in a fresh Python: the JSON it prints, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout), done.stderr


def test_orphaned_grandchild_is_reaped_by_the_subreaper() -> None:
    result, _ = run_script(SUBREAPER_SCRIPT)
    assert result["exit"] == [result["worker"], 0]
    assert result["orphan"] == [result["grandchild"], 0]
    assert result["left"] is False


STORM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal
    from chapiteau.supervisor.children.child_exit import ChildWatcher, quiet_signal_wakeup
    from chapiteau.supervisor.children.spawn import SpawnSpec, spawn

    async def main():
        loop = asyncio.get_running_loop()
        exits = asyncio.Queue()
        watcher = ChildWatcher(loop, lambda *call: exits.put_nowait(call))
        quiet_signal_wakeup()
        worker = spawn(SpawnSpec(argv=("true",), env={"PATH": "/usr/bin:/bin"}))
        watcher.watch(worker)
        # The loop does not run meanwhile: the wake-up fd fills and drops bytes.
        for _ in range(20000):
            os.kill(os.getpid(), signal.SIGCHLD)
        exit = await asyncio.wait_for(exits.get(), 5)
        watcher.close()
        print(json.dumps({"worker": worker, "exit": exit}))

    asyncio.run(main())
    """
)


def test_a_sigchld_storm_is_silent_and_loses_no_exit() -> None:
    result, stderr = run_script(STORM_SCRIPT)
    assert result["exit"] == [result["worker"], 0]
    assert "wakeup fd" not in stderr


def test_sigchlds_that_arrive_together_make_one_reaping_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each waitpid(-1) walks the kernel's list of every child of the supervisor (0.5 ms
    at 6,000 workers): a burst of SIGCHLD makes one pass, not one per signal."""
    passes: list[int] = []
    waitpid = os.waitpid

    def counted(pid: int, options: int) -> tuple[int, int]:
        if pid == -1:
            passes.append(pid)
        return waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", counted)

    async def scenario(_: ChildWatcher, __: Exits, ___: Exits) -> None:
        for _ in range(50):
            os.kill(os.getpid(), signal.SIGCHLD)
        async with asyncio.timeout(TIMEOUT):
            while not passes:
                await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(passes) == 1

    run(scenario)
