"""kill -9 of the supervisor: the broker restarts it with the same listening socket.

The kernel keeps queueing connections on the broker's socket while no worker
exists, so a client that connects in the gap is served by the next generation.
"""

from __future__ import annotations

import os
import signal
import socket

from integration.harness import (
    free_port,
    http_get,
    is_alive,
    read_response,
    socket_inodes,
    wait_until,
)


def config(port: int) -> str:
    return f"""
[broker]
user = nobody
orphan_timeout = 5

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
numprocesses = 2
copy_env = true
"""


def _restarted(tree, count: int) -> int:
    """The pid of the ``count``-th supervisor, once it holds its sockets."""
    pid = tree.wait_for("supervisor_started", where=lambda e: e["start"] == count)[-1]["pid"]
    tree.wait_for("supervisor_ready", where=lambda e: e["pid"] == pid)
    return pid


def test_client_connected_while_no_supervisor_exists_is_served_by_the_new_one(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    old_supervisor = tree.supervisor_pid()
    old_workers = tree.worker_pids("web", 2)
    old_inodes = socket_inodes(old_supervisor)
    http_get(port)

    for pid in [old_supervisor, *old_workers]:
        os.kill(pid, signal.SIGKILL)
    # A worker still dying could accept the client and reset it; a dead one holds no fd.
    wait_until(lambda: not any(is_alive(pid) for pid in [old_supervisor, *old_workers]))
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")

    new_supervisor = _restarted(tree, 2)
    body = read_response(client)
    client.close()
    served_by = int(body.split()[3])
    assert served_by not in old_workers
    assert new_supervisor != old_supervisor
    assert socket_inodes(new_supervisor) & old_inodes
    assert tree.wait_for("supervisor_died")[0]["exit_code"] == -9


def test_repeated_crashes_back_off(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    for generation in (1, 2, 3):
        os.kill(_restarted(tree, generation), signal.SIGKILL)
    _restarted(tree, 4)
    delays = [e["delay"] for e in tree.wait_for("supervisor_restart_scheduled", count=3)]
    # The first restart is immediate: the dead supervisor's workers wait to be adopted.
    assert delays[:3] == [0.0, 0.1, 0.2]


def test_sigterm_to_the_supervisor_alone_starts_a_new_one_on_the_same_socket(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    supervisor = tree.supervisor_pid()
    old_workers = tree.worker_pids("web", 2)
    old_inodes = socket_inodes(supervisor)
    os.kill(supervisor, signal.SIGTERM)
    new_supervisor = _restarted(tree, 2)
    assert tree.wait_for("supervisor_exited")[0]["pid"] == supervisor
    assert not any(is_alive(pid) for pid in old_workers)
    assert socket_inodes(new_supervisor) & old_inodes
    served_by = int(http_get(port).split()[3])
    assert served_by in tree.worker_pids("web", 2)


def test_sigterm_stops_the_whole_tree(chapiteau):
    port = free_port()
    tree = chapiteau(config(port))
    supervisor = tree.supervisor_pid()
    workers = tree.worker_pids("web", 2)
    assert tree.stop() == 0
    for pid in [supervisor, *workers]:
        assert not is_alive(pid)
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", port)) != 0
    refused.close()
