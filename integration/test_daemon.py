"""``--daemon``, ``--pidfile`` and ``--log-output``, as an init script would use them.

The foreground command returns once the service runs (and releases the
caller's pipes), or fails with the reason when it cannot start; the pidfile
holds the broker's pid, which an operator signals to stop everything; a
pidfile naming a live process is refused with status 1 by the command itself,
before it detaches. A daemon needs a log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.main import DAEMON_NEEDS_LOG_OUTPUT
from chapiteau.broker.startup import STILL_STARTING
from chapiteau.supervisor.children.process_tree import descendants
from integration.conftest import broker_directory
from integration.harness import (
    DEFAULT_TIMEOUT,
    argv,
    free_port,
    http_get,
    is_alive,
    kill_tree,
    wait_until,
)

MARKER = "worker-output-marker"


def config(port: int) -> str:
    return f"""
[circus]
endpoint = tcp://127.0.0.1:{free_port()}
pubsub_endpoint = tcp://127.0.0.1:{free_port()}

[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
copy_env = true

[watcher:talker]
cmd = /bin/sh -c "echo {MARKER}; exec sleep 600"
"""


def tree_of(config_path: Path) -> list[int]:
    """Pids of every process whose command line names ``config_path`` (broker, supervisor)."""
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit()
        and any(str(config_path) in word for word in argv(int(name)))
        and is_alive(int(name))
    ]


@pytest.fixture
def daemon(workdir) -> Iterator[tuple[Path, int]]:
    """A config file and its port; whatever it started is killed by pid afterwards."""
    port = free_port()
    path = workdir / "chapiteau.ini"
    path.write_text(config(port))
    path.chmod(0o644)
    yield path, port
    kill_tree(tree_of(path))


def run(path: Path, *args: str, log_output: bool = True) -> subprocess.CompletedProcess:
    """Run chapiteau to completion; ``--daemon`` logs to daemon.log unless told otherwise."""
    if log_output and "--daemon" in args and "--log-output" not in args:
        args = (*args, "--log-output", str(path.parent / "daemon.log"))
    return subprocess.run(
        [sys.executable, "-m", "chapiteau.broker", str(path), *args],
        capture_output=True,
        text=True,
        cwd=path.parent,
        stdin=subprocess.DEVNULL,
        timeout=DEFAULT_TIMEOUT,
    )


def served(port: int) -> bool:
    with contextlib.suppress(OSError):
        return "hello from pid" in http_get(port, timeout=2)
    return False


def read_pid(pidfile: Path) -> int:
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit())
    return int(pidfile.read_text())


def test_daemon_detaches_and_the_pidfile_holds_the_broker(daemon):
    path, port = daemon
    pidfile = path.parent / "chapiteau.pid"
    result = run(path, "--daemon", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    pid = read_pid(pidfile)
    assert pid in tree_of(path)
    assert "chapiteau.broker" in argv(pid)
    assert os.getsid(pid) != os.getsid(0)
    wait_until(lambda: served(port))


def test_sigterm_to_the_pidfile_pid_stops_everything(daemon):
    path, port = daemon
    pidfile = broker_directory(path.parent) / "chapiteau.pid"
    assert run(path, "--daemon", "--pidfile", str(pidfile)).returncode == 0
    pid = read_pid(pidfile)
    wait_until(lambda: served(port))
    tree = {pid, *descendants(pid)}
    assert len(tree) >= 4, tree
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(is_alive(p) for p in tree))
    assert not pidfile.exists()
    assert not served(port)


def test_pidfile_in_a_root_directory_outlives_the_confined_broker_and_is_taken_over(daemon):
    path, port = daemon
    pidfile = path.parent / "chapiteau.pid"
    assert run(path, "--daemon", "--pidfile", str(pidfile)).returncode == 0
    pid = read_pid(pidfile)
    wait_until(lambda: served(port))
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"))
    assert pidfile.read_text() == f"{pid}\n"
    again = run(path, "--daemon", "--pidfile", str(pidfile))
    assert again.returncode == 0, again.stderr
    wait_until(lambda: read_pid(pidfile) != pid)
    assert read_pid(pidfile) in tree_of(path)


def test_pidfile_naming_a_live_process_that_is_not_chapiteau_is_refused(daemon):
    path, _ = daemon
    pidfile = path.parent / "chapiteau.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    result = run(path, "--daemon", "--pidfile", str(pidfile))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"names pid {os.getpid()}, a running " in lines[0] and ", not chapiteau: " in lines[0]
    assert pidfile.read_text() == f"{os.getpid()}\n"
    assert tree_of(path) == []


def test_second_chapiteau_on_the_pidfile_of_a_running_one_says_so(daemon):
    path, port = daemon
    pidfile = path.parent / "chapiteau.pid"
    assert run(path, "--daemon", "--pidfile", str(pidfile)).returncode == 0
    pid = read_pid(pidfile)
    result = run(path, "--daemon", "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert result.stderr == (
        f"chapiteau: chapiteau is already running with pid {pid} (pid file {pidfile}): "
        f"stop it first (kill {pid})\n"
    )
    assert read_pid(pidfile) == pid and served(port)


def test_pidfile_of_a_dead_process_is_taken_over(daemon):
    path, _ = daemon
    pidfile = path.parent / "chapiteau.pid"
    pidfile.write_text("999999999\n")
    assert run(path, "--daemon", "--pidfile", str(pidfile)).returncode == 0
    wait_until(lambda: pidfile.read_text() != "999999999\n")
    assert read_pid(pidfile) in tree_of(path)


def test_log_output_gets_broker_supervisor_and_worker_output(daemon):
    path, port = daemon
    log = path.parent / "all.log"
    result = run(path, "--daemon", "--log-output", str(log), "--log-format", "json")
    assert result.returncode == 0
    assert result.stdout == result.stderr == ""
    wait_until(lambda: served(port))

    def complete() -> bool:
        text = log.read_text()
        return all(word in text for word in ('"socket_bound"', '"supervisor_ready"', MARKER))

    wait_until(complete)


def test_start_up_error_goes_to_stderr_even_with_log_output(daemon):
    path, _ = daemon
    path.write_text("[socket:web]\nport = http\n")
    log = path.parent / "all.log"
    result = run(path, "--daemon", "--log-output", str(log))
    assert result.returncode == 1
    assert ":socket:web:port: 'http' is not an integer" in result.stderr


def test_circus_section_pidfile_logoutput_and_loglevel_apply(daemon):
    path, port = daemon
    pidfile = broker_directory(path.parent) / "from-config.pid"
    logfile = path.parent / "from-config.log"
    text = path.read_text().replace(
        "[circus]\n",
        f"[circus]\npidfile = {pidfile}\nlogoutput = {logfile}\nloglevel = warning\n",
    )
    path.write_text(text)
    assert run(path, "--daemon", log_output=False).returncode == 0
    pid = read_pid(pidfile)
    wait_until(lambda: served(port))
    wait_until(lambda: MARKER in logfile.read_text())
    assert "supervisor_started" not in logfile.read_text()  # an info line, below warning
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists())


def test_daemon_without_a_log_file_is_refused(daemon):
    path, _ = daemon
    result = run(path, "--daemon", log_output=False)
    assert result.returncode == 1
    assert result.stderr == f"chapiteau: {DAEMON_NEEDS_LOG_OUTPUT}\n"
    assert tree_of(path) == []


def test_daemon_returns_once_the_service_is_ready(daemon):
    path, port = daemon
    log = path.parent / "all.log"
    result = run(path, "--daemon", "--log-output", str(log), "--log-format", "json")
    assert result.returncode == 0, result.stderr
    assert '"event": "service_ready"' in log.read_text()
    wait_until(lambda: served(port))


def test_daemon_whose_supervisor_never_becomes_ready_fails_with_its_error(daemon):
    path, _ = daemon
    command = f"{sys.executable} -c 'import no_such_module'"
    path.write_text(
        path.read_text().replace("[broker]\n", f"[broker]\nsupervisor_command = {command}\n")
    )
    result = run(path, "--daemon")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "ModuleNotFoundError: No module named 'no_such_module'" in lines
    assert lines[-1].startswith("chapiteau: the supervisor (pid ")
    assert lines[-1].endswith(") exited with status 1 before it was ready")
    wait_until(lambda: tree_of(path) == [])


def test_daemon_still_starting_after_start_timeout_is_left_running_and_said_so(daemon):
    path, _ = daemon
    path.write_text(
        path.read_text().replace("[broker]\n", "[broker]\nsupervisor_command = /bin/sleep 600\n")
    )
    pidfile = path.parent / "chapiteau.pid"
    result = run(path, "--daemon", "--start-timeout", "0.5", "--pidfile", str(pidfile))
    assert result.returncode == STILL_STARTING
    pid = read_pid(pidfile)
    assert result.stderr == (
        f"chapiteau: the daemon (pid {pid}) is still starting after 0.5 s (--start-timeout); "
        f"it runs on, and its log ({path.parent / 'daemon.log'}) says why it is not ready\n"
    )
    assert is_alive(pid)
    kill_tree([pid])
    wait_until(lambda: tree_of(path) == [])
