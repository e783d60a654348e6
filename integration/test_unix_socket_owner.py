"""A unix socket given to another user: ``owner``, ``group`` and ``mode`` on ``[socket:NAME]``.

The case the options exist for: a reverse proxy running as www-data connects
to a socket the broker (root at start) bound and gave to www-data with mode
0660, while a user that is neither the owner nor in the group is refused by
the kernel (EACCES). The confined broker cannot chown: a reload that would
need it is refused, and the broker and its sockets go on.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from integration.conftest import broker_directory
from integration.harness import is_alive
from integration.test_unix_socket import SERVER

CLIENT = """
import socket, sys
with socket.socket(socket.AF_UNIX) as client:
    client.settimeout(10)
    try:
        client.connect(sys.argv[1])
    except OSError as exc:
        sys.exit(f"errno {exc.errno}")
    print(client.makefile().readline() if sys.argv[2:] == ["read"] else "connected", end="")
"""


@pytest.fixture(scope="module", autouse=True)
def www_data() -> pwd.struct_passwd:
    """Debian's web server account; created (idempotently) where the system lacks it."""
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "www-data"],
        capture_output=True,
        check=False,
    )
    return pwd.getpwnam("www-data")


def sockets(workdir: Path) -> str:
    return f"""
[socket:app]
path = {workdir}/run/app.sock
owner = www-data
mode = 0660

[socket:shared]
path = {workdir}/run/shared.sock
group = www-data
mode = 0660
"""


def watcher() -> str:
    return "[watcher:app]\ncmd = python3 unix_server.py $(circus.sockets.app)\ncopy_env = true\n"


@pytest.fixture
def running(daemon, workdir: Path):
    (workdir / "unix_server.py").write_text(SERVER)
    (workdir / "unix_server.py").chmod(0o644)
    # Where the confined broker can still bind on reload: a chown is all it lacks there.
    broker_directory(workdir)
    d = daemon(watcher() + sockets(workdir))
    d.tree.worker_pids("app", 1)
    return d


def connect_as(user: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a client as ``user`` with only that user's own groups."""
    return subprocess.run(
        ["/usr/bin/python3", "-c", CLIENT, str(path), *args],
        user=user,
        group=pwd.getpwnam(user).pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_socket_files_have_the_configured_owner_group_and_mode(running, workdir, www_data):
    app = os.lstat(workdir / "run" / "app.sock")
    assert (app.st_uid, app.st_gid, stat.S_IMODE(app.st_mode)) == (www_data.pw_uid, 0, 0o660)
    shared = os.lstat(workdir / "run" / "shared.sock")
    group = grp.getgrnam("www-data").gr_gid
    assert (shared.st_uid, shared.st_gid, stat.S_IMODE(shared.st_mode)) == (0, group, 0o660)


def test_www_data_connects_to_its_socket_and_is_served(running, workdir):
    client = connect_as("www-data", workdir / "run" / "app.sock", "read")
    assert client.returncode == 0, client.stderr
    assert client.stdout.startswith("hello from pid ")


def test_www_data_connects_through_the_group(running, workdir):
    client = connect_as("www-data", workdir / "run" / "shared.sock")
    assert (client.returncode, client.stdout) == (0, "connected"), client.stderr


@pytest.mark.parametrize("name", ["app.sock", "shared.sock"])
def test_a_user_neither_owner_nor_in_the_group_is_refused(running, workdir, name):
    client = connect_as("nobody", workdir / "run" / name)
    assert client.returncode == 1
    assert client.stderr.strip() == f"errno {errno.EACCES}"


def test_a_reload_adding_an_owned_socket_is_refused_and_the_broker_goes_on(running, workdir):
    late = f"\n[socket:late]\npath = {workdir}/run/late.sock\nowner = www-data\n"
    running.rewrite_config(watcher() + sockets(workdir) + late)
    reply = running.call("reloadconfig", waiting=True)
    assert reply["status"] == "error"
    assert (
        "socket:late: owner and group of a unix socket are applied at start only"
        in (reply["reason"])
    )
    assert not os.path.lexists(workdir / "run" / "late.sock")
    assert is_alive(running.tree.pid)
    assert connect_as("www-data", workdir / "run" / "app.sock", "read").stdout.startswith("hello")


def test_a_reload_changing_the_mode_of_a_given_socket_says_why_it_cannot(running, workdir):
    running.rewrite_config(watcher() + sockets(workdir).replace("mode = 0660", "mode = 0666", 1))
    reply = running.call("reloadconfig", waiting=True)
    assert reply["status"] == "error"
    assert (
        f"cannot change the mode of {workdir}/run/app.sock: Operation not permitted"
        in (reply["reason"])
    )
    assert stat.S_IMODE(os.lstat(workdir / "run" / "app.sock").st_mode) == 0o660
    assert is_alive(running.tree.pid)
    assert connect_as("www-data", workdir / "run" / "app.sock", "read").stdout.startswith("hello")


def test_a_reload_adds_a_socket_with_a_mode_only(running, workdir):
    late = f"\n[socket:late]\npath = {workdir}/run/late.sock\nmode = 0666\n"
    running.rewrite_config(watcher() + sockets(workdir) + late)
    assert running.call("reloadconfig", waiting=True)["status"] == "ok"
    assert stat.S_IMODE(os.lstat(workdir / "run" / "late.sock").st_mode) == 0o666
    assert (connect_as("nobody", workdir / "run" / "late.sock").returncode) == 0
