"""A command that crashes at once is restarted with growing delays and cheaply for the supervisor.

Circus respawns it once per check_delay forever, or spins when check_delay is
small (issue #1157); chapiteau backs off exponentially and keeps serving the
other watchers.
"""

from __future__ import annotations

import os
import time

from integration.harness import free_port, http_get

CRASHING_COMMANDS = ("false", "sh -c 'exit 3'")


def config(command: str, port: int) -> str:
    return f"""
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:crash]
cmd = {command}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
copy_env = true
"""


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_crash_loop_delays_grow(chapiteau):
    tree = chapiteau(config("false", free_port()))
    backoffs = tree.wait_for("crash_loop_backoff", where=lambda e: e["watcher"] == "crash", count=5)
    delays = [e["delay"] for e in backoffs]
    assert delays == sorted(delays)
    assert delays[-1] >= 8 * delays[0]


def test_crash_loop_spawns_are_bounded_and_cost_little_cpu(chapiteau):
    tree = chapiteau(config("sh -c 'exit 3'", free_port()))
    supervisor = tree.supervisor_pid()
    tree.wait_for("process_spawned", where=lambda e: e["watcher"] == "crash")
    ticks_before = cpu_ticks(supervisor)

    time.sleep(4)

    spawns = tree.events_named("process_spawned", lambda e: e["watcher"] == "crash")
    # Backoff 0.1, 0.2, 0.4, ... allows about 7 spawns in 4 s; polling would allow hundreds.
    assert len(spawns) <= 10
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    assert cpu_ticks(supervisor) - ticks_before < ticks_per_second // 2


def test_other_watchers_keep_serving_during_a_crash_loop(chapiteau):
    port = free_port()
    tree = chapiteau(config("false", port))
    tree.wait_for("crash_loop_backoff", where=lambda e: e["watcher"] == "crash", count=4)
    [web] = tree.worker_pids("web", 1)
    assert f"pid {web} " in http_get(port)
