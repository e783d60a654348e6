"""Port 80 is bound by the broker as root; the supervisor and every worker run as nobody."""

from __future__ import annotations

import pwd

from integration.harness import argv, http_get, open_fds, proc_status, socket_inodes, tcp_sockets

NOBODY = pwd.getpwnam("nobody")

CONFIG = """
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = 80

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
numprocesses = 2
copy_env = true
"""

# Capabilities the broker keeps once bound: KILL, NET_BIND_SERVICE (docs/security.md).
BROKER_CAPABILITIES = (1 << 5) | (1 << 10)


def ids(status: dict[str, str], field: str) -> set[int]:
    return {int(value) for value in status[field].split()}


def test_worker_answers_on_port_80_as_nobody(chapiteau):
    tree = chapiteau(CONFIG)
    tree.worker_pids("web", 2)
    body = http_get(80)
    assert f"uid {NOBODY.pw_uid}" in body


def test_supervisor_and_workers_run_as_nobody_without_capabilities(chapiteau):
    tree = chapiteau(CONFIG)
    for pid in [tree.supervisor_pid(), *tree.worker_pids("web", 2)]:
        status = proc_status(pid)
        assert ids(status, "Uid") == {NOBODY.pw_uid}, (pid, status["Uid"])
        assert ids(status, "Gid") == {NOBODY.pw_gid}, (pid, status["Gid"])
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapPrm"], 16) == 0
        assert int(status["CapAmb"], 16) == 0
        assert status["NoNewPrivs"] == "1"


def test_broker_keeps_only_the_capabilities_it_needs(chapiteau):
    tree = chapiteau(CONFIG)
    tree.supervisor_pid()
    status = proc_status(tree.pid)
    assert int(status["CapBnd"], 16) == BROKER_CAPABILITIES
    assert int(status["CapEff"], 16) == BROKER_CAPABILITIES
    assert int(status["CapPrm"], 16) == BROKER_CAPABILITIES
    assert status["NoNewPrivs"] == "1"


def test_broker_holds_the_port_80_socket_the_workers_use(chapiteau):
    tree = chapiteau(CONFIG)
    workers = tree.worker_pids("web", 2)
    listening = {inode for inode, entry in tcp_sockets().items() if entry == (80, "0A")}
    assert len(listening) == 1
    inode = f"socket:[{listening.pop()}]"
    assert inode in socket_inodes(tree.pid)
    assert inode in socket_inodes(tree.supervisor_pid())
    for pid in workers:
        assert inode in socket_inodes(pid)


def test_worker_inherits_exactly_one_socket(chapiteau):
    tree = chapiteau(
        """
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = 80

[watcher:sleeper]
cmd = /bin/sleep 1000 $(circus.sockets.web)
"""
    )
    (pid,) = tree.worker_pids("sleeper", 1)
    fds = open_fds(pid)
    inherited = {fd: target for fd, target in fds.items() if fd > 2}
    assert len(inherited) == 1, fds
    (fd, target) = inherited.popitem()
    assert target.startswith("socket:")
    assert proc_status(pid)["Uid"].split()[0] == str(NOBODY.pw_uid)
    assert argv(pid)[2] == str(fd)


def test_closed_stdio_never_lends_its_numbers_to_a_socket(chapiteau, workdir):
    """Started with fds 0-2 closed, the broker fills them with /dev/null before binding."""
    tree = chapiteau(CONFIG, "--log-output", str(workdir / "chapiteau.log"), stdio_closed=True)
    workers = tree.worker_pids("web", 2)
    assert f"uid {NOBODY.pw_uid}" in http_get(80)
    for pid in (tree.pid, tree.supervisor_pid(), *workers):
        fds = open_fds(pid)
        assert all(not fds[fd].startswith("socket:") for fd in (0, 1, 2)), (pid, fds)
