"""chapiteauctl drives a real chapiteau: every answer printed as circusctl prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from integration.harness import free_port, wait_until

CTL = Path(sys.executable).parent / "chapiteauctl"


def config(endpoint: str, pubsub: str, stats: str, web_port: int) -> str:
    return f"""
[circus]
endpoint = {endpoint}
pubsub_endpoint = {pubsub}
stats_endpoint = {stats}

[broker]
user = nobody

[watcher:sleeper]
cmd = sleep 1000
numprocesses = 2
graceful_timeout = 2

[watcher:idle]
cmd = sleep 1000
autostart = false

[socket:web]
host = 127.0.0.1
port = {web_port}
"""


class Ctl:
    """Runs the installed chapiteauctl against one endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __call__(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CTL), "--endpoint", self.endpoint, "--timeout", str(timeout), *args],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )

    def out(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result
        return result.stdout


@pytest.fixture
def ctl(chapiteau) -> Ctl:
    ports = [free_port() for _ in range(3)]
    web_port = free_port()
    endpoint = f"tcp://127.0.0.1:{ports[0]}"
    tree = chapiteau(
        config(endpoint, f"tcp://127.0.0.1:{ports[1]}", f"tcp://127.0.0.1:{ports[2]}", web_port)
    )
    tree.worker_pids("sleeper", 2)
    client = Ctl(endpoint)
    client.tree = tree
    client.web_port = web_port
    wait_until(lambda: client("list", timeout=1).returncode == 0)
    return client


def test_list_prints_watcher_names(ctl: Ctl) -> None:
    assert ctl.out("list") == "idle,sleeper\n"


def test_list_name_prints_the_pids(ctl: Ctl) -> None:
    pids = ctl.out("list", "sleeper").strip().split(",")
    assert len(pids) == 2 and all(pid.isdigit() for pid in pids)


def test_status_prints_each_watcher_state(ctl: Ctl) -> None:
    assert ctl.out("status") == "idle: stopped\nsleeper: active\n"
    assert ctl.out("status", "sleeper") == "active\n"


def test_incr_and_decr_with_waiting_print_the_new_count(ctl: Ctl) -> None:
    assert ctl.out("incr", "sleeper", "--waiting") == "3\n"
    wait_until(lambda: len(ctl.out("list", "sleeper").split(",")) == 3)
    assert ctl.out("decr", "sleeper", "2", "--waiting") == "1\n"
    wait_until(lambda: len(ctl.out("list", "sleeper").split(",")) == 1)


def test_stats_prints_one_line_per_process(ctl: Ctl) -> None:
    lines = ctl.out("stats", "sleeper").splitlines()
    assert lines[0] == "sleeper:"
    for line in lines[1:]:
        key, _, rest = line.partition(": ")
        pid, cmdline, user = rest.split()[:3]
        assert (key, cmdline, user) == (pid, "sleep", "nobody")


def test_listsockets_prints_fd_name_and_address(ctl: Ctl) -> None:
    [line] = ctl.out("listsockets").splitlines()
    fd, _, rest = line.partition(":")
    assert fd.isdigit() and rest == f"socket 'web' at 127.0.0.1:{ctl.web_port}"


def test_options_prints_key_value_lines(ctl: Ctl) -> None:
    options = dict(line.split(": ", 1) for line in ctl.out("options", "sleeper").splitlines())
    assert (options["cmd"], options["numprocesses"], options["stop_signal"]) == (
        "sleep 1000",
        "2",
        "15",
    )


def test_add_then_rm_a_watcher(ctl: Ctl) -> None:
    assert ctl.out("add", "--start", "extra", "sleep", "500") == "ok\n"
    wait_until(lambda: ctl.out("status", "extra") == "active\n")
    assert ctl.out("list") == "extra,idle,sleeper\n"
    assert ctl.out("rm", "extra", "--waiting") == "ok\n"
    assert ctl.out("list") == "idle,sleeper\n"


def test_set_env_reaches_the_watcher(ctl: Ctl) -> None:
    assert ctl.out("set", "sleeper", "env", "GREETING=hello", "--waiting") == "ok\n"
    assert "GREETING=hello" in ctl.out("get", "sleeper", "env")


def test_reload_waiting_replaces_the_processes(ctl: Ctl) -> None:
    before = set(ctl.out("list", "sleeper").strip().split(","))
    assert ctl.out("reload", "sleeper", "--waiting") == "ok\n"
    after = set(ctl.out("list", "sleeper").strip().split(","))
    assert len(after) == 2 and not before & after


def test_error_reply_exits_3_with_the_reason(ctl: Ctl) -> None:
    result = ctl("stop", "nosuch")
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.startswith("error: ") and "nosuch" in result.stderr


def test_quit_stops_the_daemon(ctl: Ctl) -> None:
    assert ctl.out("quit", "--waiting") in ("ok\n", "")
    wait_until(lambda: ctl.tree.process.poll() is not None)
    assert ctl("list", timeout=0.5).returncode == 1
