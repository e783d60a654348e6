"""SIGHUP reloads every watcher gracefully: new workers first, then the old ones stop.

Workers are observed through /proc: ``$(circus.wid)`` in the argv shows each
worker's wid, as Circus's ``test_reload_wid_*`` tests check over ZMQ.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from chapiteau.supervisor.children.process_tree import children
from integration.harness import argv, is_alive, wait_until


def config(numprocesses: int, extra: str = "") -> str:
    return f"""
[broker]
user = nobody

[watcher:w]
cmd = sleep 1000 $(circus.wid)
numprocesses = {numprocesses}
{extra}
"""


def live_wids(supervisor: int, program: str = "sleep") -> set[int]:
    """The wids (last argv word) of the supervisor's live children running ``program``.

    A sample is kept only if the list of children did not change while it was
    taken: a worker that forked and another that died in between would be
    missed and miscounted.
    """
    while True:
        listed = children(supervisor)
        found = set()
        for pid in listed:
            words = argv(pid)
            if words[:1] == [program] and is_alive(pid):
                found.add(int(words[-1]))
        if children(supervisor) == listed:
            return found


def live_workers(supervisor: int) -> int:
    """How many children of the supervisor are alive, from one consistent sample.

    Counted as processes, not wids: a replacement caught in the middle of its
    execve has no command line yet, but it is there.
    """
    while True:
        listed = children(supervisor)
        count = sum(is_alive(pid) for pid in listed)
        if children(supervisor) == listed:
            return count


def reload_and_wait(tree, supervisor: int, expected: set[int]) -> None:
    os.kill(tree.pid, signal.SIGHUP)
    wait_until(lambda: live_wids(supervisor) == expected)


def test_reload_of_one_worker_alternates_wid_1_and_2(chapiteau):
    tree = chapiteau(config(1))
    supervisor = tree.supervisor_pid()
    wait_until(lambda: live_wids(supervisor) == {1})
    reload_and_wait(tree, supervisor, {2})
    reload_and_wait(tree, supervisor, {1})


def test_reload_of_four_workers_alternates_wids_1_to_4_and_5_to_8(chapiteau):
    tree = chapiteau(config(4))
    supervisor = tree.supervisor_pid()
    wait_until(lambda: live_wids(supervisor) == {1, 2, 3, 4})
    reload_and_wait(tree, supervisor, {5, 6, 7, 8})
    reload_and_wait(tree, supervisor, {1, 2, 3, 4})


def test_reload_starts_the_new_workers_before_stopping_the_old_ones(chapiteau):
    tree = chapiteau(config(3))
    old = set(tree.worker_pids("w", 3))

    os.kill(tree.pid, signal.SIGHUP)
    tree.wait_for("process_reaped", count=3)

    events = tree.read_events()
    spawned_new = [
        i for i, e in enumerate(events) if e["event"] == "process_spawned" and e["pid"] not in old
    ]
    reaped_old = [
        i for i, e in enumerate(events) if e["event"] == "process_reaped" and e["pid"] in old
    ]
    assert len(spawned_new) == 3
    assert len(reaped_old) == 3
    assert max(spawned_new) < min(reaped_old)


def test_reload_with_send_hup_signals_the_workers_and_keeps_them(chapiteau, workdir: Path):
    out = workdir / "out"
    out.mkdir()
    out.chmod(0o777)
    (workdir / "hup.sh").write_text("trap 'echo $$ >> out/hup' HUP\nwhile :; do sleep 0.1; done\n")
    tree = chapiteau(config(2, "send_hup = true").replace("sleep 1000 $(circus.wid)", "sh hup.sh"))
    workers = tree.worker_pids("w", 2)

    os.kill(tree.pid, signal.SIGHUP)

    wait_until(lambda: (out / "hup").exists() and len((out / "hup").read_text().split()) == 2)
    assert sorted(int(pid) for pid in (out / "hup").read_text().split()) == sorted(workers)
    assert all(is_alive(pid) for pid in workers)
    assert not tree.events_named("process_reaped")


def test_max_age_replaces_workers_without_ever_running_fewer_than_numprocesses(chapiteau):
    tree = chapiteau(config(2, "max_age = 1\nmax_age_variance = 0"))
    supervisor = tree.supervisor_pid()
    wait_until(lambda: len(live_wids(supervisor)) == 2)
    spawned_before = len(tree.wait_for("process_spawned", count=2))

    lowest = 2
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        lowest = min(lowest, live_workers(supervisor))

    assert len(tree.events_named("process_spawned")) - spawned_before >= 4
    assert lowest == 2
