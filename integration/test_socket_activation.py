"""Socket activation: the broker takes the sockets systemd passes (LISTEN_FDS) and needs no root.

``sd_listen_exec.py`` stands in for systemd: this test binds the socket as
root, and the wrapper passes it as fd 3 named by LISTEN_FDNAMES, switches to
``nobody`` (as ``User=`` would) and execs chapiteau with LISTEN_PID = its pid.
"""

from __future__ import annotations

import os
import pwd
import random
import socket
import sys
from pathlib import Path

import pytest

from integration.harness import free_port, http_get, proc_status, socket_inodes

WRAPPER = str(Path(__file__).with_name("sd_listen_exec.py"))

CONFIG = """
[socket:web]
host = 127.0.0.1
port = {web}

[socket:extra]
host = 127.0.0.1
port = {extra}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
copy_env = true
"""


def _privileged_listener() -> socket.socket:
    """A socket listening on a free loopback port below 1024 (never 80: another test's)."""
    for port in random.sample(range(600, 1000), 400):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(16)
        return sock
    raise AssertionError("no free port below 1024")


def _passing(sock: socket.socket, name: str, user: str | None = None) -> dict:
    """The ``chapiteau`` fixture's arguments that start it as systemd would, with ``sock``."""
    who = ["--user", user] if user else []
    return {
        "prefix": [sys.executable, WRAPPER, *who, f"{sock.fileno()}:{name}", "--"],
        "pass_fds": [sock.fileno()],
    }


def test_a_broker_given_its_privileged_socket_runs_without_root(chapiteau):
    web = _privileged_listener()
    port = web.getsockname()[1]
    inode = f"socket:[{os.fstat(web.fileno()).st_ino}]"
    tree = chapiteau(CONFIG.format(web=port, extra=free_port()), **_passing(web, "web", "nobody"))
    web.close()
    tree.wait_for("supervisor_ready")

    status = proc_status(tree.pid)
    assert status["Uid"].split()[0] == str(pwd.getpwnam("nobody").pw_uid)
    assert int(status["CapEff"], 16) == 0
    assert tree.wait_for("socket_activated")[0]["name"] == "web"
    # The section systemd did not pass is bound as usual (a port nobody may bind).
    assert tree.wait_for("socket_bound")[0]["name"] == "extra"
    assert inode in socket_inodes(tree.supervisor_pid())
    assert "uid 65534" in http_get(port)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("web", "chapiteau.ini:socket:web: the socket systemd passed as 'web' is bound to"),
        ("api", "systemd passed a socket named 'api' but"),
    ],
    ids=["does not fit its section", "no section has its name"],
)
def test_a_passed_socket_that_is_not_the_config_s_is_a_start_error(chapiteau, name, error):
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    tree = chapiteau(CONFIG.format(web=free_port(), extra=free_port()), **_passing(other, name))
    other.close()
    assert tree.process.wait(15) == 1
    assert error in tree.log_path.read_text()
