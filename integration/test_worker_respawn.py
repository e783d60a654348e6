"""A worker that dies is replaced at once, woken by its exit rather than by a periodic check."""

from __future__ import annotations

import os
import signal

from integration.harness import argv, is_alive

# check_delay is Circus's polling period; a respawn that waited for it would miss the
# harness's 15 s timeout.
CONFIG = """
[circus]
check_delay = 60

[broker]
user = nobody

[watcher:sleeper]
cmd = sleep 1000 $(circus.wid)
numprocesses = 2
"""


def test_a_worker_killed_with_sigkill_is_replaced_by_a_new_process(chapiteau):
    tree = chapiteau(CONFIG)
    first, second = tree.worker_pids("sleeper", 2)
    victim_wid = argv(first)[2]

    os.kill(first, signal.SIGKILL)

    [replacement] = [
        e["pid"]
        for e in tree.wait_for("process_spawned", where=lambda e: e["pid"] not in (first, second))
    ]
    assert is_alive(replacement)
    assert argv(replacement) == ["sleep", "1000", victim_wid]
    assert is_alive(second)
    reaped = tree.wait_for("process_reaped", where=lambda e: e["pid"] == first)
    assert reaped[0]["exit_code"] == -signal.SIGKILL


RESPAWN_OFF = """
[broker]
user = nobody

[watcher:once]
cmd = sleep 1000
numprocesses = 2
respawn = false
"""


def test_without_respawn_a_dead_worker_stays_dead(chapiteau):
    tree = chapiteau(RESPAWN_OFF)
    first, second = tree.worker_pids("once", 2)

    os.kill(first, signal.SIGKILL)
    tree.wait_for("process_reaped", where=lambda e: e["pid"] == first)

    assert is_alive(second)
    assert [e["pid"] for e in tree.events_named("process_spawned")] == [first, second]


def test_without_respawn_the_watcher_stops_when_its_last_worker_died(chapiteau):
    tree = chapiteau(RESPAWN_OFF)
    workers = tree.worker_pids("once", 2)

    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    tree.wait_for("watcher_stopped", where=lambda e: e["watcher"] == "once")
    assert len(tree.events_named("process_spawned")) == 2
