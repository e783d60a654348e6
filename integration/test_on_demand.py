"""on_demand: the watcher starts at the first connection to its socket, and nothing else does."""

from __future__ import annotations

from integration.harness import free_port, http_get, is_alive


def config(port: int) -> str:
    # "lazy" sorts and starts after "eager": Circus only ever starts an on_demand watcher
    # that comes first, and starts every other autostart watcher with it.
    return f"""
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:eager]
cmd = sleep 1000
priority = 10

[watcher:later]
cmd = sleep 1000
autostart = false

[watcher:lazy]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
copy_env = true
on_demand = true
"""


def test_on_demand_watcher_does_not_start_at_boot(chapiteau):
    tree = chapiteau(config(free_port()))
    tree.wait_for("on_demand_waiting", where=lambda e: e["watcher"] == "lazy")
    tree.wait_for("watcher_started", where=lambda e: e["watcher"] == "eager")
    assert not tree.events_named("process_spawned", lambda e: e["watcher"] == "lazy")


def test_first_connection_starts_the_watcher_and_is_served(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    tree.wait_for("on_demand_waiting", where=lambda e: e["watcher"] == "lazy")

    body = http_get(port)

    [worker] = [
        e["pid"] for e in tree.events_named("process_spawned", lambda e: e["watcher"] == "lazy")
    ]
    assert f"pid {worker} " in body
    assert is_alive(worker)


def test_a_connection_leaves_the_other_watchers_alone(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    [eager] = tree.worker_pids("eager", 1)
    tree.wait_for("on_demand_waiting", where=lambda e: e["watcher"] == "lazy")

    http_get(port)
    http_get(port)

    spawned = tree.events_named("process_spawned")
    assert [e["pid"] for e in spawned if e["watcher"] == "later"] == []
    assert [e["pid"] for e in spawned if e["watcher"] == "eager"] == [eager]
    assert len([e for e in spawned if e["watcher"] == "lazy"]) == 1
