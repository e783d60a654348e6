"""Circus's own clients (circusctl, CircusClient, circus-top) work against chapiteau unchanged.

The clients come from the real ``circus`` 0.19 package, installed with pip into
a throwaway virtualenv made once per test session. If pip cannot install it
the tests fail (they do not skip): compatibility is then unproven.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.harness import free_port, wait_until

CIRCUS_REQUIREMENTS = Path(__file__).with_name("circus-requirements.txt")


@pytest.fixture(scope="session")
def circus_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the real circus package."""
    venv = tmp_path_factory.mktemp("circus-venv")
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, f"cannot create a virtualenv for circus: {made.stderr}"
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(CIRCUS_REQUIREMENTS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, (
        f"pip could not install {CIRCUS_REQUIREMENTS}, so Circus's clients cannot be "
        f"tested against chapiteau:\n{installed.stdout}\n{installed.stderr}"
    )
    return venv


CONFIG = """
[circus]
endpoint = {endpoint}
pubsub_endpoint = {pubsub}
stats_endpoint = {stats}
statsd = true

[broker]
user = nobody

[watcher:sleeper]
cmd = sleep 1000
numprocesses = 2
graceful_timeout = 2

[socket:web]
host = 127.0.0.1
port = {web_port}
"""


class Daemon:
    """A running chapiteau and the endpoints Circus's clients talk to."""

    def __init__(self, tree, venv: Path, endpoint: str, stats: str, web_port: int) -> None:
        self.tree = tree
        self.venv = venv
        self.endpoint = endpoint
        self.stats = stats
        self.web_port = web_port

    def circusctl(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "circusctl"), "--endpoint", self.endpoint,
             "--timeout", str(int(timeout)), *args],
            capture_output=True,
            text=True,
            timeout=timeout + 20,
        )  # fmt: skip

    def out(self, *args: str) -> str:
        result = self.circusctl(*args)
        assert result.returncode == 0, result
        return result.stdout

    def client_call(self, message: dict) -> dict:
        """One call through circus.client.CircusClient, in the circus virtualenv."""
        script = (
            "import json, sys\n"
            "from circus.client import CircusClient\n"
            "client = CircusClient(endpoint=sys.argv[1], timeout=10)\n"
            "print(json.dumps(client.call(json.loads(sys.argv[2]))))\n"
            "client.stop()\n"
        )
        result = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", script, self.endpoint, json.dumps(message)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def daemon(chapiteau, circus_venv: Path) -> Daemon:
    endpoint, pubsub, stats = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    web_port = free_port()
    tree = chapiteau(
        CONFIG.format(endpoint=endpoint, pubsub=pubsub, stats=stats, web_port=web_port)
    )
    tree.worker_pids("sleeper", 2)
    running = Daemon(tree, circus_venv, endpoint, stats, web_port)
    wait_until(lambda: running.circusctl("list", timeout=1).returncode == 0)
    return running


def test_circusctl_list(daemon: Daemon) -> None:
    assert daemon.out("list") == "sleeper\n"
    pids = daemon.out("list", "sleeper").strip().split(",")
    assert len(pids) == 2 and all(pid.isdigit() for pid in pids)


def test_circusctl_status(daemon: Daemon) -> None:
    assert daemon.out("status") == "sleeper: active\n"
    assert daemon.out("status", "sleeper") == "active\n"


def test_circusctl_incr_decr(daemon: Daemon) -> None:
    # Without --waiting circusd answers at once with a plain ok; with it, the new count.
    assert daemon.out("incr", "sleeper") == "ok\n"
    wait_until(lambda: len(daemon.out("list", "sleeper").split(",")) == 3)
    assert daemon.out("decr", "sleeper", "--waiting") == "2\n"
    assert daemon.out("incr", "sleeper", "2", "--waiting") == "4\n"


def test_circusctl_stats(daemon: Daemon) -> None:
    lines = daemon.out("stats").splitlines()
    assert lines[0] == "sleeper:"
    assert len(lines) == 3
    for line in lines[1:]:
        key, _, rest = line.partition(": ")
        fields = rest.split()
        # pid cmdline user nice rss vms cpu mem ctime
        assert len(fields) == 9 and fields[0] == key
        assert (fields[1], fields[2]) == ("sleep", "nobody")


def test_circusctl_listsockets(daemon: Daemon) -> None:
    [line] = daemon.out("listsockets").splitlines()
    fd, _, rest = line.partition(":")
    assert fd.isdigit() and rest == f"socket 'web' at 127.0.0.1:{daemon.web_port}"


def test_circusctl_options(daemon: Daemon) -> None:
    lines = daemon.out("options", "sleeper").splitlines()
    options = dict(line.split(": ", 1) for line in lines)
    assert options["cmd"] == "sleep 1000" and options["numprocesses"] == "2"
    assert options["graceful_timeout"] == "2.0"


def test_circusctl_add_and_rm(daemon: Daemon) -> None:
    assert daemon.out("add", "--start", "extra", "sleep 500") == "ok\n"
    wait_until(lambda: daemon.out("status", "extra") == "active\n")
    assert daemon.out("list") == "extra,sleeper\n"
    assert daemon.out("rm", "extra") == "ok\n"
    wait_until(lambda: daemon.out("list") == "sleeper\n")


def test_circusctl_reload_waiting(daemon: Daemon) -> None:
    before = set(daemon.out("list", "sleeper").strip().split(","))
    assert daemon.out("reload", "sleeper", "--waiting") == "ok\n"
    after = set(daemon.out("list", "sleeper").strip().split(","))
    assert len(after) == 2 and not before & after


def test_circusctl_error_reply_exits_3(daemon: Daemon) -> None:
    result = daemon.circusctl("stop", "nosuch")
    assert result.returncode == 3 and result.stderr.startswith("error: ")


def test_circusctl_quit(daemon: Daemon) -> None:
    assert daemon.out("quit") == "ok\n"
    wait_until(lambda: daemon.tree.process.poll() is not None)


def test_circus_client_calls(daemon: Daemon) -> None:
    listed = daemon.client_call({"command": "list", "properties": {}})
    assert (listed["status"], listed["watchers"]) == ("ok", ["sleeper"])
    incr = daemon.client_call(
        {"command": "incr", "properties": {"name": "sleeper", "waiting": True}}
    )
    assert incr["numprocesses"] == 3
    stats = daemon.client_call({"command": "stats", "properties": {"name": "sleeper"}})
    assert stats["name"] == "sleeper" and len(stats["info"]) == 3
    for info in stats["info"].values():
        assert {"pid", "cmdline", "mem_info1", "cpu", "ctime"} <= set(info)


def test_circus_top_shows_the_watcher_and_its_pids(daemon: Daemon) -> None:
    pids = daemon.out("list", "sleeper").strip().split(",")
    screen = _run_on_terminal(
        [str(daemon.venv / "bin" / "circus-top"), "--endpoint", daemon.stats], seconds=3.5
    )
    assert "sleeper" in screen and "circus" in screen
    assert all(pid in screen for pid in pids), screen
    assert "(circusd)" in screen and f"127.0.0.1:{daemon.web_port}" in screen


def _run_on_terminal(argv: list[str], seconds: float) -> str:
    """Run a curses program on a pseudo-terminal for ``seconds``; return all it drew."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERM="xterm", LINES="50", COLUMNS="120")
        os.execv(argv[0], argv)
    output = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    output += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return output.decode(errors="replace")
