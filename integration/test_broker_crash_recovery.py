"""kill -9 of broker and supervisor together, then ``chapiteau`` again on the same config.

The orphaned workers keep serving on the listening socket; the new broker
copies that very socket out of them (pidfd_getfd) instead of failing on
EADDRINUSE, starts its own workers on it, and only then retires the orphans.
A client connecting all along is never refused.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from chapiteau.protocol.constants import INSTANCE_VARIABLE
from chapiteau.supervisor.children.process_tree import descendants
from integration.harness import (
    Chapiteau,
    free_port,
    http_get,
    is_alive,
    kill_together,
    proc_status,
    socket_inodes,
    wait_until,
)
from integration.managed import marked

CAP_SYS_PTRACE = 19

CONFIG = """
[broker]
user = nobody
orphan_timeout = 5

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
numprocesses = 2
"""


class Connecting(threading.Thread):
    """Connects to ``port`` again and again until stopped; counts the refusals."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = threading.Event()
        self.connects = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                self.connects += 1
            except OSError as exc:
                self.errors.append(str(exc))
            self.done.wait(0.002)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def _leave(broker: Chapiteau, supervisor: int) -> None:
    """The broker upgrade's first step: the old broker leaves (SIGTTIN), its workers serve on."""
    broker.process.send_signal(signal.SIGTTIN)
    assert broker.process.wait(15) == 0
    wait_until(lambda: not is_alive(supervisor))


@pytest.mark.parametrize(
    "end",
    [lambda broker, supervisor: kill_together(broker.pid, supervisor), _leave],
    ids=["kill -9 of broker and supervisor", "the broker leaves (upgrade)"],
)
def test_a_new_broker_recovers_the_socket_of_its_dead_predecessor_and_retires_its_workers(
    chapiteau, end
):
    port = free_port()
    first = chapiteau(CONFIG.format(port=port))
    first.wait_for("supervisor_ready")
    supervisor = first.supervisor_pid()
    orphans = first.worker_pids("web", 2)
    [inode] = socket_inodes(orphans[0]) & socket_inodes(supervisor)
    instance = os.path.realpath(first.config_path)
    client = Connecting(port)
    client.start()
    second = None
    try:
        end(first, supervisor)
        assert all(is_alive(pid) for pid in orphans)
        second = first.again()
        recovered = second.wait_for("socket_recovered")[0]
        second.wait_for("orphans_retired", timeout=30)
        new_supervisor = second.supervisor_pid()
        workers = second.worker_pids("web", 2)
        http_get(port)
    finally:
        client.stop()
        if second is not None:
            second.track_tree()
    try:
        assert recovered["name"] == "web"
        assert recovered["pid"] in orphans
        assert inode in socket_inodes(new_supervisor)
        assert inode in socket_inodes(workers[0])
        assert not any(is_alive(pid) for pid in orphans)
        assert client.errors == [] and client.connects > 0
        managed = {second.pid, *descendants(second.pid)}
        assert set(marked(instance, INSTANCE_VARIABLE)) <= managed
        # pidfd_getfd needed CAP_SYS_PTRACE: gone for good once the broker is confined.
        assert not int(proc_status(second.pid)["CapBnd"], 16) & 1 << CAP_SYS_PTRACE
    finally:
        second.shut_down()


def test_a_running_chapiteau_is_not_robbed_by_a_second_one_on_its_config(chapiteau):
    first = chapiteau(CONFIG.format(port=free_port()))
    first.wait_for("supervisor_ready")
    workers = first.worker_pids("web", 2)
    second = first.again()
    try:
        assert second.process.wait(15) == 1
    finally:
        second.kill_everything()
    assert (
        "chapiteau.ini:socket:web: its socket is also held by pid"
        in Path(second.log_path).read_text()
    )
    assert all(is_alive(pid) for pid in workers)
