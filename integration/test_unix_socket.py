"""A unix socket: bound with the configured umask, served by a worker, removed at stop.

Circus reads ``umask`` as decimal and creates unix sockets 0767 by default
(``[socket:NAME] umask``); chapiteau reads it as octal with a default of 077.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
from pathlib import Path

import pytest

from integration.conftest import BROKER_USER

NOBODY = pwd.getpwnam("nobody")

SERVER = """
import os, socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
listener.setblocking(True)
while True:
    conn, _ = listener.accept()
    conn.sendall(f"hello from pid {os.getpid()} uid {os.getuid()}\\n".encode())
    conn.close()
"""


def config(workdir: Path, umask: str | None) -> str:
    umask_line = f"umask = {umask}" if umask is not None else ""
    return f"""
[broker]
user = nobody

[socket:app]
path = app.sock
{umask_line}

[watcher:app]
cmd = python3 unix_server.py $(circus.sockets.app)
copy_env = true
"""


def start(chapiteau, workdir: Path, umask: str | None = None):
    (workdir / "unix_server.py").write_text(SERVER)
    (workdir / "unix_server.py").chmod(0o644)
    tree = chapiteau(config(workdir, umask))
    tree.worker_pids("app", 1)
    return tree


def ask(path: Path) -> str:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(path))
        return client.makefile().readline()


def test_worker_serves_the_unix_socket_as_nobody(chapiteau, workdir):
    start(chapiteau, workdir)
    assert f"uid {NOBODY.pw_uid}" in ask(workdir / "app.sock")


@pytest.mark.parametrize(("umask", "mode"), [(None, 0o700), ("000", 0o777), ("022", 0o755)])
def test_socket_file_mode_follows_the_octal_umask(chapiteau, workdir, umask, mode):
    start(chapiteau, workdir, umask)
    st = os.lstat(workdir / "app.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode


def test_socket_file_is_removed_when_chapiteau_stops(chapiteau, workdir):
    # The confined broker removes it from a directory its own account may write.
    workdir.chmod(0o755)
    os.chown(workdir, pwd.getpwnam(BROKER_USER).pw_uid, 0)
    tree = start(chapiteau, workdir)
    assert ask(workdir / "app.sock")
    assert tree.stop() == 0
    assert not os.path.lexists(workdir / "app.sock")


def test_socket_file_in_a_root_directory_stays_at_stop_and_the_log_says_so(chapiteau, workdir):
    tree = start(chapiteau, workdir)
    assert tree.stop() == 0
    assert os.path.lexists(workdir / "app.sock")
    (warning,) = tree.events_named("socket_file_not_removed")
    assert warning["path"] == str(workdir / "app.sock")
    assert warning["error"] == "Permission denied"
