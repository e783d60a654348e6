"""The service user cannot turn the broker's root file operations against root's files.

Each test plays the attacker of issue 8: nobody owns a directory that the
config names for a log file, a pidfile or a unix socket, and plants links
there or swaps names with rename-exchange while the broker works. The broker
must refuse such a path at start, with one line naming the path, the
directory and who can write it, and no root file may change. Unlink failures
of the broker's own socket files are logged, never fatal, and a stale socket
file left by them does not block the next start.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from integration.harness import DEFAULT_TIMEOUT, Chapiteau
from integration.zmq_clients import Control
from tests.nobody import (
    SECRET,
    assert_untouched,
    directory_of_nobody,
    exchanging,
    plant,
    root_secret,
    run_as_nobody,
)

ATTACK_SECONDS = 20.0
PLANT_LINKS = """
import os, sys
prefix, target, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for pid in range(first, last):
    os.symlink(target, f"{prefix}.{pid}.tmp")
"""
SWAP_FOR_LINK = """
import os, sys
directory, target = sys.argv[1], sys.argv[2]
os.rename(directory, directory + ".moved")
os.symlink(target, directory)
"""


@pytest.fixture
def theirs(workdir: Path) -> Path:
    """A directory the service user owns, inside the root-owned work directory."""
    return directory_of_nobody(workdir / "theirs")


@pytest.fixture
def secret(workdir: Path) -> Path:
    return root_secret(workdir / "secret")


def running(tree: Chapiteau, event: str = "supervisor_ready") -> bool:
    """Wait until chapiteau is up (True) or has exited (False)."""
    try:
        tree.wait_for(event)
    except AssertionError:
        assert tree.process is not None and tree.process.poll() is not None
        return False
    return True


def outcome(tree: Chapiteau) -> tuple[int | None, str]:
    """Exit status of a chapiteau that should exit by itself (None: still running), its error."""
    assert tree.process is not None
    try:
        status = tree.process.wait(DEFAULT_TIMEOUT)
    except subprocess.TimeoutExpired:
        status = None
    errors = [event["error"] for event in tree.read_events() if event["event"] == "fatal_error"]
    return status, "\n".join(errors)


def writable_by_nobody(directory: Path) -> str:
    return (
        f"the directory {directory} is writable by the service user 'nobody' "
        f"(it is owned by nobody)"
    )


def reload_config(tree: Chapiteau, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the config file and have chapiteau re-read it."""
    text = tree.config_path.read_text()
    assert old in text
    tree.config_path.write_text(text.replace(old, new))
    endpoint = re.search(r"^endpoint = (\S+)$", text, re.MULTILINE)
    assert endpoint is not None
    control = Control(endpoint.group(1))
    try:
        assert control.call("reloadconfig", waiting=True)["status"] == "ok"
    finally:
        control.close()


def unix_config(path: Path, umask: str = "077") -> str:
    return f"[broker]\nuser = nobody\n\n[socket:app]\npath = {path}\numask = {umask}\n"


def connect_config(path: Path) -> str:
    return f"[broker]\nuser = nobody\nsocket_path = {path}\n"


def test_log_output_through_a_planted_link_is_refused(chapiteau, theirs, secret):
    log = theirs / "chapiteau.log"
    plant(log, secret)
    tree = chapiteau("[broker]\nuser = nobody\n", "--log-output", str(log))
    status, error = outcome(tree)
    assert_untouched(secret)
    assert status == 1 and f"log output: {log}: {writable_by_nobody(theirs)}" in error


def test_pidfile_temporary_names_planted_as_links_are_refused(chapiteau, theirs, secret):
    pidfile = theirs / "chapiteau.pid"
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    run_as_nobody(PLANT_LINKS, str(pidfile), str(secret), str(last), str(last + 3000))
    tree = chapiteau("[broker]\nuser = nobody\n", "--pidfile", str(pidfile))
    assert last < tree.pid < last + 3000
    status, error = outcome(tree)
    assert_untouched(secret)
    assert status == 1 and f"pid file: {pidfile}: {writable_by_nobody(theirs)}" in error


def test_socket_mode_change_on_reload_cannot_be_swapped_onto_a_root_file(chapiteau, theirs, secret):
    path = theirs / "app.sock"
    tree = chapiteau(unix_config(path))
    if running(tree):
        plant(theirs / "decoy", secret)
        umasks = ["077", "000"]
        with exchanging(path, theirs / "decoy", ATTACK_SECONDS) as deadline:
            while time.monotonic() < deadline and stat.S_IMODE(os.stat(secret).st_mode) == 0o600:
                reload_config(tree, f"umask = {umasks[0]}", f"umask = {umasks[1]}")
                umasks.reverse()
    status, error = outcome(tree)
    assert_untouched(secret)
    assert status == 1 and f"cannot bind {path}: {writable_by_nobody(theirs)}" in error


def test_unix_socket_through_a_planted_directory_link_is_refused(chapiteau, workdir, theirs):
    root_only = workdir / "root-only"
    root_only.mkdir(mode=0o700)
    plant(theirs / "sub", root_only)
    tree = chapiteau(unix_config(theirs / "sub" / "app.sock"))
    status, error = outcome(tree)
    assert list(root_only.iterdir()) == []
    assert status == 1 and writable_by_nobody(theirs) in error
    assert "who could swap 'sub' for a link" in error


def test_stop_cannot_be_made_to_delete_a_root_file(chapiteau, workdir, theirs):
    root_only = workdir / "root-only"
    root_only.mkdir(mode=0o700)
    (root_only / "broker.sock").write_text(SECRET)
    tree = chapiteau(connect_config(theirs / "run" / "broker.sock"))
    if running(tree, "broker_listening"):
        run_as_nobody(SWAP_FOR_LINK, str(theirs / "run"), str(root_only))
        tree.stop()
    status, error = outcome(tree)
    assert (root_only / "broker.sock").read_text() == SECRET
    assert status == 1 and writable_by_nobody(theirs) in error


SPARE = """
[broker]
user = nobody

[socket:spare]
path = {directory}/spare.sock

[watcher:sleeper]
cmd = sleep 1000
"""


def test_reload_survives_a_socket_file_it_cannot_remove(chapiteau, workdir):
    sockets = workdir / "sockets"
    sockets.mkdir(mode=0o755)
    tree = chapiteau(SPARE.format(directory=sockets))
    tree.wait_for("supervisor_ready")
    # Root without CAP_DAC_OVERRIDE, as the broker runs after binding, cannot write here.
    sockets.chmod(0o555)
    reload_config(tree, f"[socket:spare]\npath = {sockets}/spare.sock\n", "")
    (failure,) = tree.wait_for("socket_file_not_removed")
    assert failure["path"] == f"{sockets}/spare.sock" and failure["error"] == "Permission denied"
    tree.wait_for("sockets_reloaded")
    assert tree.stop() == 0
    assert "Traceback" not in tree.log_path.read_text()


def test_stop_survives_a_socket_file_it_cannot_remove_and_the_next_start_replaces_it(
    chapiteau, workdir
):
    sockets = workdir / "sockets"
    sockets.mkdir(mode=0o755)
    first = chapiteau(SPARE.format(directory=sockets))
    first.wait_for("supervisor_ready")
    sockets.chmod(0o555)
    assert first.stop() == 0
    assert first.events_named("socket_file_not_removed")
    assert "Traceback" not in first.log_path.read_text()
    assert stat.S_ISSOCK(os.lstat(sockets / "spare.sock").st_mode)
    sockets.chmod(0o755)
    second = chapiteau(SPARE.format(directory=sockets))
    # Both write the same log file: the second's own ready is the second one in it.
    second.wait_for("supervisor_ready", count=2)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sockets / "spare.sock"))
