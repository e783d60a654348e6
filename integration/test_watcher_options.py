"""Watcher options seen from outside: stop_children, priority, autostart, warmups, singleton."""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from chapiteau.supervisor.children.process_tree import children
from integration.harness import argv, is_alive, wait_until


def seconds_between(first: dict, second: dict) -> float:
    parse = datetime.fromisoformat
    return (parse(second["timestamp"]) - parse(first["timestamp"])).total_seconds()


def test_stop_children_sends_the_stop_signal_to_the_worker_children(chapiteau, workdir: Path):
    out = workdir / "out"
    out.mkdir()
    out.chmod(0o777)
    (workdir / "parent.sh").write_text(
        "sh -c 'trap \"echo $$ >> out/child; exit 0\" TERM; while :; do sleep 0.1; done' &\nwait\n"
    )
    tree = chapiteau("""
[broker]
user = nobody

[watcher:parent]
cmd = sh parent.sh
stop_children = true
graceful_timeout = 5
""")
    [worker] = tree.worker_pids("parent", 1)
    wait_until(lambda: len(children(worker)) == 1)
    [child] = children(worker)

    assert tree.stop() == 0

    assert (out / "child").read_text().split() == [str(child)]


def test_watchers_start_in_priority_order_highest_first(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:a_low]
cmd = sleep 1000
priority = 1

[watcher:b_high]
cmd = sleep 1000
priority = 30

[watcher:c_middle]
cmd = sleep 1000
priority = 20
""")
    tree.wait_for("watcher_started", count=3)
    assert [e["watcher"] for e in tree.events_named("process_spawned")] == [
        "b_high",
        "c_middle",
        "a_low",
    ]


def test_autostart_false_watcher_is_not_started(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:manual]
cmd = sleep 1000
autostart = false

[watcher:zz_auto]
cmd = sleep 1000
""")
    tree.wait_for("watcher_started", where=lambda e: e["watcher"] == "zz_auto")
    assert [e["watcher"] for e in tree.events_named("process_spawned")] == ["zz_auto"]


def test_watcher_warmup_delay_spaces_its_spawns(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:slow]
cmd = sleep 1000
numprocesses = 3
warmup_delay = 0.5
""")
    tree.wait_for("process_spawned", count=3)
    first, second, third = tree.events_named("process_spawned")
    assert seconds_between(first, second) >= 0.5
    assert seconds_between(second, third) >= 0.5


def test_global_warmup_delay_spaces_the_watchers(chapiteau):
    tree = chapiteau("""
[circus]
warmup_delay = 0.5

[broker]
user = nobody

[watcher:one]
cmd = sleep 1000

[watcher:two]
cmd = sleep 1000
""")
    tree.wait_for("process_spawned", count=2)
    one, two = tree.events_named("process_spawned")
    assert seconds_between(one, two) >= 0.5


SINGLETON = """
[broker]
user = nobody

[watcher:only]
cmd = sleep 1000
singleton = true
{extra}
"""


def count_alive(supervisor: int) -> int:
    return sum(1 for pid in children(supervisor) if is_alive(pid) and argv(pid)[:1] == ["sleep"])


def test_singleton_reload_never_runs_two_processes(chapiteau):
    tree = chapiteau(SINGLETON.format(extra=""))
    supervisor = tree.supervisor_pid()
    [old] = tree.worker_pids("only", 1)

    os.kill(tree.pid, signal.SIGHUP)
    highest = 0
    deadline = time.monotonic() + 15
    while len(tree.events_named("process_spawned")) < 2 or count_alive(supervisor) != 1:
        highest = max(highest, count_alive(supervisor))
        assert time.monotonic() < deadline

    assert highest <= 1
    assert not is_alive(old)


def test_singleton_max_age_never_runs_two_processes(chapiteau):
    tree = chapiteau(SINGLETON.format(extra="max_age = 1\nmax_age_variance = 0"))
    supervisor = tree.supervisor_pid()
    tree.worker_pids("only", 1)
    highest = 0
    deadline = time.monotonic() + 15
    while len(tree.events_named("process_spawned")) < 3:
        highest = max(highest, count_alive(supervisor))
        assert time.monotonic() < deadline
    assert highest == 1


@pytest.mark.parametrize("batches", ["", "max_replacing = 1\n"])
def test_a_graceful_reload_spaces_its_spawns_by_warmup_delay(daemon, batches):
    # In batches of max_replacing too: warmup_delay is the pause between two spawns.
    d = daemon(f"[watcher:slow]\ncmd = sleep 1000\nnumprocesses = 3\nwarmup_delay = 0.3\n{batches}")
    d.tree.wait_for("process_spawned", count=3)
    reply = d.call("reload", name="slow", waiting=True)
    assert reply["status"] == "ok", reply
    spawns = d.tree.wait_for("process_spawned", count=6)[3:]
    assert len(spawns) == 3
    assert all(seconds_between(a, b) >= 0.3 for a, b in itertools.pairwise(spawns))
