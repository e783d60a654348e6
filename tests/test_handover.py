"""Tests for chapiteau.supervisor.handover: snapshots written once per burst, and how the
next generation tells its predecessor's workers apart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from chapiteau.protocol.broker_messages import MAX_HELD_PER_REPLY
from chapiteau.supervisor.broker_client import BrokerError
from chapiteau.supervisor.children.process_tree import start_time
from chapiteau.supervisor.handover import POOL, Handover, claim, markers, orphans, retire
from chapiteau.supervisor.state import (
    STATE_KEYS,
    ProcessRecord,
    WatcherRecord,
    decode,
    encode_process,
)


class FakeBroker:
    """What a broker holds, in this process: memfds and pipes by key."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.held: dict[str, int] = {}
        self.released: list[str] = []
        self.requests = 0
        self.limit = limit
        self.refused = 0
        """Fds held at most (``max_held_fds``): beyond, hold_pipes is refused."""

    def hold_memfd(self, key: str) -> int:
        self.held[key] = os.memfd_create(key)
        return os.dup(self.held[key])

    def hold_pipes(self, keys: list[str]) -> list[tuple[int, int]]:
        assert len(keys) <= MAX_HELD_PER_REPLY
        self.requests += 1
        if len(self.held) + len(keys) > self.limit:
            self.refused += 1
            raise BrokerError("broker refused hold_pipes: too many")
        pipes = [os.pipe() for _ in keys]
        for key, (read, _) in zip(keys, pipes, strict=True):
            self.held[key] = os.dup(read)
        return pipes

    def release(self, keys: tuple[str, ...]) -> None:
        # The broker refuses a longer list (bad_message).
        assert len(keys) <= MAX_HELD_PER_REPLY
        self.requests += 1
        self.released += keys

    def take_held(self) -> dict[str, int]:
        return {key: os.dup(fd) for key, fd in self.held.items()}


def snapshot_of(count: int) -> list[tuple[WatcherRecord, list[bytes]]]:
    processes = [encode_process(ProcessRecord(pid, 1, 0.0, 1)) for pid in range(count)]
    return [(WatcherRecord("web", "active"), processes)]


def test_a_burst_of_changes_is_written_once() -> None:
    async def burst() -> Handover:
        handover = Handover(broker, asyncio.get_running_loop(), lambda: snapshot_of(1000), "1")
        handover.resume()
        for _ in range(1000):  # a start of 1,000 processes in one loop turn
            handover.changed()
        await asyncio.sleep(0)
        return handover

    broker = FakeBroker()
    assert asyncio.run(burst()).writes == 1
    written = decode(os.pread(broker.held[STATE_KEYS[1]], 1 << 20, 0))
    assert written is not None and len(written.watchers[0].processes) == 1000


def test_flush_writes_a_pending_change_at_once_and_nothing_else() -> None:
    async def flushed() -> list[int]:
        handover = Handover(broker, asyncio.get_running_loop(), lambda: snapshot_of(3), "1")
        handover.resume()
        writes = [handover.writes]
        handover.flush()
        writes.append(handover.writes)
        handover.changed()
        handover.flush()
        writes.append(handover.writes)
        await asyncio.sleep(0.01)  # the write it had scheduled is not made again
        writes.append(handover.writes)
        return writes

    broker = FakeBroker()
    assert asyncio.run(flushed()) == [0, 0, 1, 1]


def test_the_releases_of_a_burst_go_together_in_requests_the_broker_takes() -> None:
    # 1,000 workers stopping, or the leftovers of an adoption: not one request each, and
    # never one longer than the broker accepts.
    async def burst() -> None:
        handover = Handover(broker, asyncio.get_running_loop(), lambda: [], "1")
        for pid in range(300):
            handover.release([f"out.1.{pid}"])
        assert broker.released == []  # not before what is ready (a respawn) has run
        await asyncio.sleep(0)

    broker = FakeBroker()
    asyncio.run(burst())
    assert broker.released == [f"out.1.{pid}" for pid in range(300)]
    assert broker.requests == -(-300 // MAX_HELD_PER_REPLY)


def test_the_next_generation_reads_the_newest_snapshot_and_writes_after_it() -> None:
    broker = FakeBroker()
    loop = asyncio.new_event_loop()
    first = Handover(broker, loop, lambda: snapshot_of(1), "1")
    first.write()
    first.write()
    second = Handover(broker, loop, lambda: snapshot_of(2), "2")
    snapshot, pipes = second.take()
    assert snapshot is not None and snapshot.serial == 2 and pipes == {}
    second.write()
    assert decode(os.pread(broker.held[STATE_KEYS[1]], 1 << 20, 0)).serial == 3
    loop.close()


def test_the_next_generation_gets_the_notify_sockets_address() -> None:
    broker = FakeBroker()
    loop = asyncio.new_event_loop()
    address = "@chapiteau-notify/1/0123456789abcdef"
    Handover(broker, loop, lambda: snapshot_of(1), "1", lambda: address).write()
    snapshot, _ = Handover(broker, loop, lambda: snapshot_of(1), "2").take()
    assert snapshot is not None and snapshot.notify_socket == address
    loop.close()


def test_output_pipes_are_held_under_keys_unique_to_the_generation() -> None:
    broker = FakeBroker()
    handover = Handover(broker, asyncio.new_event_loop(), list, "7")
    pipes = handover.pipes(["stdout", "stderr"])
    assert [key for _, _, key in pipes.values()] == ["pipe.7.1", "pipe.7.2"]
    assert handover.pipes(["stdout"])["stdout"][2] == "pipe.7.3"


def test_a_spawn_takes_pipes_made_ahead_and_the_pool_refills_after_it() -> None:
    # 1,000 workers, two pipes each: a request per batch, not per worker; and once the
    # pool runs low it is filled after what is ready (a respawn) has run, never before.
    async def start() -> int:
        handover = Handover(broker, asyncio.get_running_loop(), list, "1")
        used = 0
        for _ in range(1000):
            used += len(handover.pipes(["stdout", "stderr"]))
            await asyncio.sleep(0)
        assert broker.requests <= used // (POOL // 2) + 1
        before = broker.requests
        while len(handover.pool) >= POOL // 2:
            used += len(handover.pipes(["stdout", "stderr"]))
        assert broker.requests == before
        await asyncio.sleep(0.001)  # a few turns of the loop
        assert broker.requests == before + 1
        return used

    broker = FakeBroker()
    used = asyncio.run(start())
    assert POOL // 2 <= len(broker.held) - used <= POOL


def test_once_the_broker_refused_pipes_ahead_it_is_not_asked_again_at_each_spawn() -> None:
    # Near max_held_fds: one refusal (a warning in the broker's log), not one a spawn.
    async def spawns() -> None:
        handover = Handover(broker, asyncio.get_running_loop(), list, "1")
        while len(handover.pipes(["stdout", "stderr"])) and broker.refused == 0:
            await asyncio.sleep(0.001)
        # The pool lasts, then the broker still has room for one spawn's pipes.
        for _ in range(len(handover.pool) // 2 + 1):
            pipes = handover.pipes(["stdout", "stderr"])
            await asyncio.sleep(0.001)
        assert all(key is not None for _, _, key in pipes.values())
        assert broker.refused == 1
        handover.release(["pipe.1.1", "pipe.1.2"])
        await asyncio.sleep(0.001)
        assert handover.ahead

    broker = FakeBroker(limit=POOL + 2)
    asyncio.run(spawns())


def test_near_the_brokers_limit_a_spawn_asks_only_for_its_own_pipes() -> None:
    broker = FakeBroker(limit=3)
    handover = Handover(broker, asyncio.new_event_loop(), list, "1")
    assert all(key is not None for _, _, key in handover.pipes(["stdout", "stderr"]).values())
    assert len(broker.held) == 2
    assert [key for _, _, key in handover.pipes(["stdout", "stderr"]).values()] == [None, None]


BROKER = os.getpid()
"""This process plays the broker: its children are "the broker's children"."""


def child(env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


def test_a_recorded_process_is_claimed_only_with_its_start_time() -> None:
    worker = child()
    try:
        record = ProcessRecord(worker.pid, 1, 0.0, start_time(worker.pid) or -1)
        pidfd = claim(record, BROKER)
        assert pidfd is not None
        os.close(pidfd)
        assert claim(ProcessRecord(worker.pid, 1, 0.0, record.starttime + 1), BROKER) is None
    finally:
        worker.kill()
        worker.wait()
    assert claim(record, BROKER) is None


def test_a_process_of_another_parent_is_not_claimed() -> None:
    worker = child()
    try:
        record = ProcessRecord(worker.pid, 1, 0.0, start_time(worker.pid) or -1)
        assert claim(record, os.getppid()) is None
    finally:
        worker.kill()
        worker.wait()


def test_orphans_are_the_broker_children_that_carry_the_marker() -> None:
    ours, other = child({"PATH": os.environ["PATH"], **markers("web")}), child()
    try:
        found = {
            pid: name for pid, pidfd, name in orphans(set(), BROKER) if os.close(pidfd) is None
        }
        assert found.get(ours.pid) == "web"
        assert other.pid not in found
        assert ours.pid not in {pid for pid, pidfd, _ in orphans({ours.pid}, BROKER)}
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(flush=True); time.sleep(60)"
)


def test_an_orphan_that_ignores_its_stop_signal_is_killed_after_the_timeout() -> None:
    stubborn = subprocess.Popen(
        ["python3", "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"\n"
    asyncio.run(retire(stubborn.pid, os.pidfd_open(stubborn.pid), signal.SIGTERM, 0.2))
    assert stubborn.wait(5) == -signal.SIGKILL
    stubborn.stdout.close()


def test_a_quitting_supervisor_keeps_its_last_snapshot() -> None:
    broker = FakeBroker()
    loop = asyncio.new_event_loop()
    handover = Handover(broker, loop, lambda: snapshot_of(1), "1")
    handover.write()
    handover.pause()
    handover.changed()
    loop.run_until_complete(asyncio.sleep(0))
    assert handover.writes == 1
    loop.close()


def test_an_orphan_that_leads_no_group_is_signalled_itself() -> None:
    member = subprocess.Popen(["sleep", "60"])  # in this test's process group
    try:
        asyncio.run(retire(member.pid, os.pidfd_open(member.pid), signal.SIGTERM, 5.0))
        assert member.wait(5) == -signal.SIGTERM
    finally:
        member.kill()
        member.wait()


def test_nothing_is_written_while_the_previous_snapshot_is_adopted() -> None:
    broker = FakeBroker()
    loop = asyncio.new_event_loop()
    handover = Handover(broker, loop, lambda: snapshot_of(1), "1")
    handover.changed()  # a process adopted
    loop.run_until_complete(asyncio.sleep(0))
    assert handover.writes == 0
    handover.resume()
    loop.run_until_complete(asyncio.sleep(0))
    assert handover.writes == 1
    loop.close()
