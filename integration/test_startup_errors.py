"""A start-up mistake stops chapiteau at once: one line on stderr, non-zero exit, nothing left.

Circus logs such errors and exits 0; an init system must
see the failure, and nothing may stay half-started: no supervisor, no worker,
no bound socket.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from integration.harness import argv, free_port

VENV = Path(sys.prefix)
TIMEOUT = 30


def run(
    directory: Path, config: str, *args: str, user: str | None = None, python: str | None = None
) -> subprocess.CompletedProcess:
    """Run chapiteau on ``config`` to completion (it must exit by itself)."""
    path = directory / "chapiteau.ini"
    path.write_text(config)
    path.chmod(0o644)
    command = [python or sys.executable, "-m", "chapiteau.broker", str(path), *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    assert_nothing_left(path)
    return result


def assert_nothing_left(config: Path) -> None:
    """No process of this test's tree (they all carry the config path) is alive."""
    left = [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and any(str(config) in word for word in argv(int(name)))
    ]
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"processes left behind: {left}"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_port_in_use_is_one_line_and_exit_1(workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            workdir,
            f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n[watcher:w]\ncmd = /bin/sleep 60\n",
        )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"chapiteau: {workdir / 'chapiteau.ini'}:socket:web: cannot bind ")
    assert "address already in use" in line


def test_no_socket_stays_bound_after_a_failed_start(workdir):
    first, second = free_port(), None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        second = taken.getsockname()[1]
        result = run(
            workdir,
            f"[socket:a]\nhost = 127.0.0.1\nport = {first}\n"
            f"[socket:b]\nhost = 127.0.0.1\nport = {second}\n",
        )
    assert result.returncode == 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", first))


def test_port_80_as_a_normal_user_says_how_to_fix_it(workdir):
    result = run(
        workdir,
        "[socket:web]\nhost = 127.0.0.1\nport = 80\n[watcher:w]\ncmd = /bin/sleep 60\n",
        user="nobody",
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "cannot bind 127.0.0.1:80: ports below 1024 need root" in line
    assert "start chapiteau as root" in line and "choose a port >= 1024" in line


def test_unknown_service_user_is_one_line(workdir):
    result = run(workdir, "[broker]\nuser = nosuchuser\n[watcher:w]\ncmd = /bin/sleep 60\n")
    assert result.returncode == 1
    assert "[broker] user = nosuchuser: no such user" in one_line(result.stderr)


def test_missing_config_is_one_line(workdir):
    missing = workdir / "missing.ini"
    result = subprocess.run(
        [sys.executable, "-m", "chapiteau.broker", str(missing)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"chapiteau: {missing}: cannot read the file: No such file or directory"
    )


def test_unreadable_config_is_one_line(workdir):
    config = workdir / "private.ini"
    config.write_text("[watcher:w]\ncmd = /bin/sleep 60\n")
    config.chmod(0o600)
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-m", "chapiteau.broker", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"chapiteau: {config}: cannot read the file: Permission denied"
    )


def test_bad_option_value_names_file_section_and_key(workdir):
    result = run(workdir, "[socket:web]\nport = http\n[watcher:w]\ncmd = /bin/sleep 60\n")
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"chapiteau: {workdir / 'chapiteau.ini'}:socket:web:port: 'http' is not an integer"
    )


def test_supervisor_refusing_its_config_exits_78_with_its_message(workdir):
    result = run(
        workdir,
        f"[socket:web]\nhost = 127.0.0.1\nport = {free_port()}\n"
        "[watcher:web]\ncmd = /bin/sleep 60\nsingleton = true\nnumprocesses = 2\n",
        "--log-level",
        "critical",
    )
    assert result.returncode == 78
    line = one_line(result.stderr)
    assert line.startswith("chapiteau-supervisor: ")
    assert ":watcher:web:numprocesses: a singleton watcher runs at most 1 process" in line


def test_supervisor_refusal_is_logged_by_the_broker(workdir):
    result = run(
        workdir,
        "[watcher:web]\ncmd = /bin/sleep 60\nsingleton = true\nnumprocesses = 2\n",
        "--log-format",
        "json",
    )
    assert result.returncode == 78
    assert '"event": "supervisor_refused_config"' in result.stderr


def test_interpreter_under_a_private_directory_is_named(workdir):
    private = workdir / "private"
    venv = private / "venv"
    (venv / "bin").mkdir(parents=True)
    private.chmod(0o700)
    shutil.copy(VENV / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(VENV / "lib")
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    result = run(workdir, "[watcher:w]\ncmd = /bin/sleep 60\n", python=str(venv / "bin" / "python"))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"service user 'nobody' cannot reach {venv / 'bin' / 'python'}" in line
    assert f"directory {private} is mode 0700 owned by root:root" in line


@pytest.mark.skipif(
    pwd.getpwnam("nobody").pw_uid == 0, reason="nobody must not be root for this test"
)
def test_switching_user_without_root_is_one_line(workdir):
    result = run(
        workdir, "[broker]\nuser = root\n[watcher:w]\ncmd = /bin/sleep 60\n", user="nobody"
    )
    assert result.returncode == 1
    assert "switching to another user needs root" in one_line(result.stderr)


@pytest.mark.parametrize("key", ["endpoint", "pubsub_endpoint", "stats_endpoint"])
def test_ipc_endpoint_in_a_directory_the_service_user_cannot_write_says_how_to_fix_it(workdir, key):
    root_only = workdir / "circus"
    root_only.mkdir(mode=0o755)
    endpoints = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("endpoint", "pubsub_endpoint")}
    endpoints[key] = f"ipc://{root_only}/{key}.sock"
    circus = "".join(f"{k} = {v}\n" for k, v in endpoints.items())
    result = run(
        workdir,
        f"[circus]\n{circus}statsd = true\n[broker]\nuser = nobody\n"
        "[watcher:web]\ncmd = /bin/sleep 60\n",
        "--log-level",
        "critical",
    )
    assert result.returncode == 78
    line = one_line(result.stderr)
    assert line == (
        f"chapiteau-supervisor: {key} {endpoints[key]}: the service user nobody cannot create "
        f"files in {root_only}, where the socket file goes; use a directory that nobody may "
        "write (for example one it owns: mkdir -p DIR && chown nobody DIR), or put the "
        "endpoint under the directory the broker prepares for it ([broker] runtime_directory = "
        "/run/circus)"
    )


FAILING_SUPERVISOR = f"[broker]\nsupervisor_command = {sys.executable} -c 'import no_such_module'\n"


def test_supervisor_failing_on_import_stops_chapiteau_with_its_error(workdir):
    result = run(workdir, FAILING_SUPERVISOR, "--log-format", "json")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'no_such_module'" in result.stderr
    assert '"event": "start_up_failed"' in result.stderr
    assert "supervisor_restart_scheduled" not in result.stderr


def test_supervisor_with_a_bad_interpreter_stops_chapiteau(workdir):
    script = workdir / "supervisor"
    script.write_text("#!/nonexistent/python\n")
    script.chmod(0o755)
    result = run(workdir, f"[broker]\nsupervisor_command = {script}\n")
    assert result.returncode == 1
    assert f"cannot start the supervisor {script}: [Errno 2]" in result.stderr


def test_failed_start_up_is_on_stderr_even_with_log_output(workdir):
    log = workdir / "all.log"
    result = run(workdir, FAILING_SUPERVISOR, "--log-output", str(log))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "ModuleNotFoundError: No module named 'no_such_module'" in lines
    assert lines[-1].startswith("chapiteau: the supervisor (pid ")
    assert lines[-1].endswith(") exited with status 1 before it was ready")
    assert "ModuleNotFoundError" in log.read_text()


@pytest.mark.parametrize(
    ("sections", "error"),
    [
        ("[socket:web]\nhost = 127.0.0.1\nport = {taken}\n", "cannot bind"),
        ("[socket:web]\nhost = 127.0.0.1\nport = http\n", "'http' is not an integer"),
        ("[watcher:web]\ncmd = /bin/sleep 60\nnumprocesses = four\n", "'four' is not an integer"),
    ],
)
def test_with_json_logs_a_fatal_error_is_a_json_line_like_every_other(workdir, sections, error):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = sections.format(taken=taken.getsockname()[1])
        result = run(workdir, f"[broker]\nuser = nobody\n{config}", "--log-format", "json")
    assert result.returncode != 0
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(event["timestamp"].endswith("Z") for event in events), result.stderr
    fatal = [event for event in events if event["event"] == "fatal_error"]
    assert fatal and error in fatal[-1]["error"], result.stderr
