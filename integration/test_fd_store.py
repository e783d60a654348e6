"""systemd's fd store: the broker pushes its sockets, and a broker given them back serves them.

systemd cannot run here, so a datagram socket stands in for its notify
socket (``NOTIFY_SOCKET``), and ``sd_listen_exec.py`` passes the stored fds
back to the next broker as systemd does after a restart (``LISTEN_FDS``).
"""

from __future__ import annotations

import array
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness import free_port, http_get, socket_inodes, wait_until
from integration.test_root_file_operations import reload_config

WRAPPER = str(Path(__file__).with_name("sd_listen_exec.py"))

CONFIG = """
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {web}

[socket:spare]
host = 127.0.0.1
port = {spare}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
copy_env = true
"""


class NotifySocket:
    """The service manager's end: receives the broker's messages and the fds they carry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # as systemd's: the broker sends from its own account too
        self.messages: list[tuple[dict[str, str], list[int]]] = []

    def receive(self) -> list[tuple[dict[str, str], list[int]]]:
        """Every message so far: its assignments and its fds (ours now)."""
        self.sock.setblocking(False)
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except BlockingIOError:
                return self.messages
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            pairs = [line.split("=", 1) for line in data.decode().splitlines()]
            self.messages.append((dict(pairs), list(fds)))

    def stored(self) -> dict[str, int]:
        """FDNAME → fd of every FDSTORE=1 message so far."""
        return {fields["FDNAME"]: fds[0] for fields, fds in self.receive() if "FDSTORE" in fields}

    def close(self) -> None:
        for _, fds in self.messages:
            for fd in fds:
                os.close(fd)
        self.sock.close()


@pytest.fixture
def notify(workdir: Path) -> Iterator[NotifySocket]:
    manager = NotifySocket(workdir / "notify.sock")
    yield manager
    manager.close()


def _under_systemd(notify: NotifySocket) -> dict[str, str]:
    return {**os.environ, "NOTIFY_SOCKET": str(notify.path)}


def test_a_broker_restarted_with_its_stored_sockets_serves_the_very_same_socket(chapiteau, notify):
    config = CONFIG.format(web=free_port(), spare=free_port())
    first = chapiteau(config, env=_under_systemd(notify))
    first.wait_for("supervisor_ready")
    wait_until(lambda: set(notify.stored()) == {"web", "spare"})
    stored = notify.stored()
    inode = f"socket:[{os.fstat(stored['web']).st_ino}]"
    with socket.socket(fileno=os.dup(stored["web"])) as web:
        port = web.getsockname()[1]
    assert inode in socket_inodes(first.supervisor_pid())
    first.kill_everything()
    first.log_path.rename(first.directory / "first.log")  # the next one logs anew

    passed = [f"{fd}:{name}" for name, fd in stored.items()]
    second = chapiteau(
        config,
        prefix=[sys.executable, WRAPPER, *passed, "--"],
        pass_fds=list(stored.values()),
        env=_under_systemd(notify),
    )
    second.wait_for("supervisor_ready")
    assert {e["name"] for e in second.events_named("socket_activated")} == {"web", "spare"}
    assert not second.events_named("socket_bound")
    assert inode in socket_inodes(second.supervisor_pid())
    assert "hello from pid" in http_get(port)


def test_a_socket_a_reload_removes_is_taken_out_of_the_store(chapiteau, notify):
    spare = free_port()
    tree = chapiteau(CONFIG.format(web=free_port(), spare=spare), env=_under_systemd(notify))
    tree.wait_for("supervisor_ready")
    wait_until(lambda: set(notify.stored()) == {"web", "spare"})
    reload_config(tree, f"[socket:spare]\nhost = 127.0.0.1\nport = {spare}\n", "")
    tree.wait_for("sockets_reloaded")
    wait_until(lambda: any("FDSTOREREMOVE" in fields for fields, _ in notify.receive()))
    removed = [fields for fields, _ in notify.messages if "FDSTOREREMOVE" in fields]
    assert removed == [{"FDSTOREREMOVE": "1", "FDNAME": "spare"}]
