"""so_reuseport: each worker gets its own socket on the one port, the master never listens.

Circus binds a sibling only when the socket is
named in ``cmd``, passes the unbound master otherwise, and gives every worker
a different port when ``port = 0``. chapiteau binds the master (so port 0 is
resolved once), never listens on it, and hands each worker a listening
sibling on the master's port however the socket is referenced.
"""

from __future__ import annotations

import socket

import pytest

from integration.harness import http_get, socket_inodes, tcp_sockets

WATCHERS = {
    "cmd": "cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)",
    "args": "cmd = python3\nargs = hello_wsgi.py --fd $(circus.sockets.web)",
}


def config(reference: str) -> str:
    return f"""
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = 0
so_reuseport = true

[watcher:web]
{WATCHERS[reference]}
numprocesses = 2
copy_env = true
"""


def inode_numbers(pid: int) -> set[str]:
    return {target[len("socket:[") : -1] for target in socket_inodes(pid)}


@pytest.fixture(params=sorted(WATCHERS))
def started(request, chapiteau):
    tree = chapiteau(config(request.param))
    port = tree.wait_for("socket_bound")[-1]["port"]
    workers = tree.worker_pids("web", 2)
    return tree, port, workers


def test_each_worker_has_its_own_listening_socket_on_the_master_port(started):
    _, port, workers = started
    table = tcp_sockets()
    listening = [
        {inode for inode in inode_numbers(pid) if table.get(inode) == (port, "0A")}
        for pid in workers
    ]
    assert all(len(inodes) == 1 for inodes in listening), listening
    assert listening[0] != listening[1]


def test_master_socket_is_not_listening(started):
    tree, port, workers = started
    table = tcp_sockets()
    worker_inodes = set().union(*(inode_numbers(pid) for pid in workers))
    master = inode_numbers(tree.pid) - worker_inodes
    assert master, "the broker holds no socket of its own"
    assert not [inode for inode in master if table.get(inode, (0, ""))[1] == "0A"]
    listeners = {inode for inode, (p, state) in table.items() if p == port and state == "0A"}
    assert listeners <= worker_inodes


def test_requests_are_served_on_the_shared_port(started):
    _, port, workers = started
    served = {http_get(port).split()[3] for _ in range(20)}
    assert served <= {str(pid) for pid in workers}
    assert served


def test_connections_are_refused_not_left_hanging_when_no_worker_runs(chapiteau):
    """In Circus the listening socket accepts with no worker behind it; clients hang."""
    tree = chapiteau(
        config("cmd").replace(
            "cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)",
            "cmd = /bin/sh -c 'exit 1' $(circus.sockets.web)",
        )
    )
    port = tree.wait_for("socket_bound")[-1]["port"]
    tree.wait_for("process_spawned", where=lambda e: e.get("watcher") == "web", count=2)
    for _ in range(5):
        # Refused, or reset by a worker that dies with the connection in its queue; a
        # timeout (the hang) fails the test.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                assert conn.recv(1) == b""
        except (ConnectionRefusedError, ConnectionResetError):
            pass


def test_the_broker_steers_the_socket_or_says_once_why_not(started):
    tree, _, _ = started
    said = [
        (event["event"], event["name"])
        for event in tree.read_events()
        if event["event"] in ("socket_steered", "steering_unavailable")
    ]
    assert said in ([("socket_steered", "web")], [("steering_unavailable", "web")])
