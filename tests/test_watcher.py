"""Tests for chapiteau.supervisor.watcher, driving a real Watcher with real processes.

The processes are ``sleep`` (or ``false``) run as the current user; no root and
no broker are needed. Every test stops its watcher, and `running` kills what is
left by pid whatever fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from chapiteau.supervisor.children import process_tree
from chapiteau.supervisor.children.child_exit import ChildWatcher
from chapiteau.supervisor.children.process_tree import OrphanSearch
from chapiteau.supervisor.config import DEFAULT_PATH, Flapping, WatcherConfig
from chapiteau.supervisor.events import Events
from chapiteau.supervisor.io.notify import NotifySocket
from chapiteau.supervisor.io.redirector import Redirector
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.watcher import ReloadError, Runtime, Watcher
from tests.test_process_tree import count_our_children_reads

WAIT = 10.0


def config(cmd: str, numprocesses: int, **options: Any) -> WatcherConfig:
    return WatcherConfig(
        name="web",
        cmd=cmd,
        numprocesses=numprocesses,
        graceful_timeout=5.0,
        env={"PATH": DEFAULT_PATH},
        **options,
    )


class Recorder:
    """Every event the watcher publishes, as (topic, payload)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()

    def __call__(self, topic: str, payload: dict) -> None:
        self.events.append((topic, payload))
        self.changed.set()

    async def wait_for(self, found: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not found():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(watcher_config: WatcherConfig) -> AsyncIterator[tuple[Watcher, Recorder]]:
    """A started Watcher of ``watcher_config``; stopped, and its processes killed, after."""
    loop = asyncio.get_running_loop()
    workers: dict[int, Watcher] = {}
    spawned: set[int] = set()
    recorder = Recorder()

    def exited(pid: int, code: int | None) -> None:
        owner = workers.pop(pid, None)
        if owner is not None:
            owner.process_exited(pid, code)

    children = ChildWatcher(loop, exited)
    redirector = Redirector(loop)
    events = Events()
    events.subscribe(recorder)
    events.subscribe(
        lambda topic, payload: (
            spawned.add(payload["process_pid"]) if topic.endswith(".spawn") else None
        )
    )

    def adopt(pid: int, watcher: Watcher, pidfd: int | None) -> None:
        workers[pid] = watcher
        children.watch(pid)

    notify = NotifySocket(loop, workers.__contains__, lambda pid, f: workers[pid].notified(pid, f))
    runtime = Runtime(
        loop=loop,
        children=children,
        sockets=SocketPool(None, {}),
        redirector=redirector,
        events=events,
        arbiter=None,
        orphans=OrphanSearch(workers),
        adopt=adopt,
        notify_socket=lambda: notify.address,
        flapping=Flapping(window=30.0),
    )
    watcher = Watcher(watcher_config, runtime)
    try:
        await watcher.start()
        yield watcher, recorder
    finally:
        try:
            async with asyncio.timeout(WAIT):
                await watcher.stop()
        finally:
            for pid in spawned:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            children.close()
            redirector.close()
            notify.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def pids_alive(pids: list[int]) -> bool:
    return all(os.path.exists(f"/proc/{pid}") for pid in pids)


@pytest.mark.parametrize("sequential", [False, True])
def test_reload_that_cannot_spawn_keeps_the_old_processes(sequential: bool) -> None:
    async def test() -> None:
        async with running(config("sleep 1000", 3)) as (watcher, _):
            old = sorted(watcher.processes)
            watcher.config = config("/nonexistent/program", 3)

            with pytest.raises(ReloadError, match=r"/nonexistent/program.*3 running"):
                await watcher.reload(sequential=sequential)

            assert sorted(watcher.processes) == old
            assert pids_alive(old)
            assert watcher.state == "active"

    run(test)


def test_reload_that_spawns_replaces_every_process() -> None:
    async def test() -> None:
        async with running(config("sleep 1000", 3)) as (watcher, _):
            old = sorted(watcher.processes)
            spawned: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            info = await watcher.reload(spawned=spawned)

            assert spawned.done()
            assert info["stopped"] == old
            assert len(info["started"]) == 3 and not set(info["started"]) & set(old)
            assert sorted(watcher.processes) == info["started"]

    run(test)


def test_set_of_a_command_that_cannot_start_keeps_the_previous_settings() -> None:
    async def test() -> None:
        before = config("sleep 1000", 2)
        async with running(before) as (watcher, _):
            old = sorted(watcher.processes)

            with pytest.raises(ReloadError, match="previous settings"):
                await watcher.configure(config("/nonexistent/program", 2), reload=True)

            assert watcher.config == before
            assert sorted(watcher.processes) == old

    run(test)


def backoff_sequence(numprocesses: int, rounds: int) -> list[object]:
    """What a watcher of ``false`` does until its ``rounds``-th backoff: "spawn" for
    consecutive spawns, the delay of each crash_loop_backoff event."""

    async def test() -> list[object]:
        async with running(config("false", numprocesses)) as (watcher, recorder):

            def backoffs() -> list[dict]:
                return [p for t, p in recorder.events if t.endswith(".crash_loop_backoff")]

            await recorder.wait_for(lambda: len(backoffs()) >= rounds)
            await watcher.stop()
        sequence: list[object] = []
        for topic, payload in recorder.events:
            if topic.endswith(".spawn") and sequence[-1:] != ["spawn"]:
                sequence.append("spawn")
            elif topic.endswith(".crash_loop_backoff"):
                sequence.append(payload["delay"])
                if len(sequence) == 2 * rounds:
                    break
        return sequence

    return asyncio.run(test())


def test_crash_backoff_grows_per_round_whatever_the_number_of_processes() -> None:
    one = backoff_sequence(1, 3)
    eight = backoff_sequence(8, 3)

    assert one == ["spawn", 0.1, "spawn", 0.2, "spawn", 0.4]
    assert eight == one


def test_max_age_whose_replacement_cannot_start_keeps_the_old_process() -> None:
    async def test() -> None:
        expiring = config("sleep 1000", 2, max_age=1, max_age_variance=0)
        async with running(expiring) as (watcher, recorder):
            old = sorted(watcher.processes)
            watcher.config = replace(expiring, cmd="/nonexistent/program")

            def failures() -> int:
                return sum(t.endswith(".spawn_failed") for t, _ in recorder.events)

            await recorder.wait_for(lambda: failures() >= 2)

            assert sorted(watcher.processes) == old
            assert pids_alive(old)

    run(test)


def test_set_of_a_singleton_command_that_cannot_start_restarts_the_previous_one() -> None:
    async def test() -> None:
        before = config("sleep 1000", 1, singleton=True)
        async with running(before) as (watcher, _):
            [old] = watcher.processes

            with pytest.raises(ReloadError, match=r"singleton.*previous settings"):
                await watcher.configure(replace(before, cmd="/nonexistent/program"), reload=True)

            assert watcher.config == before
            [new] = watcher.processes
            assert new != old and watcher.state == "active"

    run(test)


def test_a_stop_during_a_start_spawns_nothing_more() -> None:
    async def test() -> None:
        async with running(config("sleep 1000", 0)) as (watcher, recorder):
            watcher.config = replace(watcher.config, numprocesses=200)

            def spawns() -> int:
                return sum(topic.endswith(".spawn") for topic, _ in recorder.events)

            starting = asyncio.ensure_future(watcher.start())
            await recorder.wait_for(lambda: spawns() >= 1)
            await watcher.stop()
            await starting

            assert spawns() < 200
            assert not watcher.processes
            assert watcher.state == "stopped"

    run(test)


def test_stop_ends_a_reload_that_waits_for_a_process_to_be_ready() -> None:
    async def test() -> None:
        quiet = config("sleep 1000", 1, readiness="notify", ready_timeout=0)
        async with running(quiet) as (watcher, _):
            reload = asyncio.ensure_future(watcher.reload())
            async with asyncio.timeout(WAIT):
                while len(watcher.processes) < 2:
                    await asyncio.sleep(0.01)
                await watcher.stop()
                with pytest.raises(ReloadError, match="the watcher is stopping"):
                    await reload
            assert watcher.processes == {}

    run(test)


def test_a_stop_of_workers_that_leave_nothing_behind_never_reads_our_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The orphan search reads this process's list of children, which costs tens of
    milliseconds with thousands of workers: a worker alone in its group needs none, so
    stopping n of them must not cost n of those reads (it cost three each)."""
    reads = count_our_children_reads(monkeypatch)

    async def test() -> None:
        async with running(config("sleep 1000", 40)) as (watcher, _):
            assert len(watcher.processes) == 40
            await watcher.stop()
            assert watcher.processes == {}

    run(test)
    assert reads == []


def test_a_spawn_leaves_the_new_process_start_time_to_the_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading a new process's /proc/PID/stat waits until its exec has closed the
    supervisor's close-on-exec fds (milliseconds with thousands of workers): a spawn does
    not read it; the first snapshot that holds the process does, once."""
    stat_reads: list[str] = []
    read = process_tree.read_proc

    def counted(path: str) -> bytes:
        if path.endswith("/stat"):
            stat_reads.append(path)
        return read(path)

    monkeypatch.setattr(process_tree, "read_proc", counted)

    async def test() -> None:
        async with running(config("sleep 1000", 3)) as (watcher, _):
            assert stat_reads == []
            _, parts = watcher.record()
            _, again = watcher.record()
            assert again == parts and len(stat_reads) == 3
            recorded = {json.loads(part)["pid"]: json.loads(part)["starttime"] for part in parts}
            assert recorded == {pid: process_tree.start_time(pid) for pid in watcher.processes}

    run(test)


@pytest.mark.parametrize("key", ["nofile", "ofile", "NoFile"])
def test_rlimit_key_limits_its_resource_in_every_process(key: str) -> None:
    async def test() -> None:
        async with running(config("sleep 1000", 1, rlimits={key: 123})) as (watcher, _):
            [pid] = watcher.processes
            assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (123, 123)

    run(test)
