"""What a worker gets from its watcher's options: stdin socket, umask, rlimits, env, cwd."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from integration.harness import environ, free_port, open_fds, socket_inodes, wait_until


def limits(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]
    return {row[:26].strip(): row[26:].split() for row in rows}


def test_stdin_socket_is_the_listening_socket_on_fd_0(chapiteau):
    tree = chapiteau(f"""
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {free_port()}

[watcher:w]
cmd = sleep 1000
stdin_socket = web
""")
    [worker] = tree.worker_pids("w", 1)
    assert open_fds(worker)[0] in socket_inodes(tree.supervisor_pid())


def writable_dir(workdir: Path) -> Path:
    out = workdir / "out"
    out.mkdir()
    out.chmod(0o777)
    return out


def created_mode(path: Path) -> int:
    wait_until(path.exists)
    return stat.S_IMODE(path.stat().st_mode)


def test_global_umask_governs_the_mode_of_files_workers_create(chapiteau, workdir):
    out = writable_dir(workdir)
    chapiteau("""
[circus]
umask = 027

[broker]
user = nobody

[watcher:w]
cmd = sh -c 'touch out/file; exec sleep 1000'
""")
    assert created_mode(out / "file") == 0o640


def test_watcher_umask_overrides_the_global_one(chapiteau, workdir):
    out = writable_dir(workdir)
    chapiteau("""
[circus]
umask = 000

[broker]
user = nobody

[watcher:w]
cmd = sh -c 'touch out/file; exec sleep 1000'
umask = 077
""")
    assert created_mode(out / "file") == 0o600


def test_rlimit_nofile_reaches_the_worker(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:w]
cmd = sleep 1000
rlimit_nofile = 321
""")
    [worker] = tree.worker_pids("w", 1)
    assert limits(worker)["Max open files"][:2] == ["321", "321"]


def test_env_section_without_copy_env_is_the_whole_environment(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:w]
cmd = sleep 1000

[env:w]
GREETING = hello
""")
    [worker] = tree.worker_pids("w", 1)
    assert environ(worker) == {
        "GREETING": "hello",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        # The mark by which a broker started again after a crash finds the worker.
        "CHAPITEAU_INSTANCE": os.path.realpath(tree.config_path),
        **markers(tree, "w"),
    }


def test_copy_env_passes_the_supervisor_environment(chapiteau):
    tree = chapiteau("""
[broker]
user = nobody

[watcher:w]
cmd = sleep 1000
copy_env = true

[env:w]
GREETING = hello
""")
    [worker] = tree.worker_pids("w", 1)
    supervisor_env = environ(tree.supervisor_pid())
    # The broker's channel to the supervisor and its start number are the supervisor's alone.
    del supervisor_env["CHAPITEAU_BROKER_FD"]
    del supervisor_env["CHAPITEAU_SUPERVISOR_START"]
    assert environ(worker) == {**supervisor_env, "GREETING": "hello", **markers(tree, "w")}


def markers(tree, watcher: str) -> dict[str, str]:
    """What marks every worker as ours (docs/zero-downtime.md): its watcher's name, and the
    supervisor's CHAPITEAU_INSTANCE when it has one."""
    instance = environ(tree.supervisor_pid()).get("CHAPITEAU_INSTANCE")
    return {"CHAPITEAU_WATCHER": watcher} | (
        {} if instance is None else {"CHAPITEAU_INSTANCE": instance}
    )


def test_working_dir_is_the_worker_cwd(chapiteau, workdir):
    (workdir / "app").mkdir()
    tree = chapiteau(f"""
[broker]
user = nobody

[watcher:w]
cmd = sleep 1000
working_dir = {workdir}/app
""")
    [worker] = tree.worker_pids("w", 1)
    assert os.readlink(f"/proc/{worker}/cwd") == f"{workdir}/app"


def test_copy_env_does_not_pass_on_systemd_variables_given_to_chapiteau(chapiteau, monkeypatch):
    given = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "LISTEN_FDS": "2",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "a:b",
        "CHAPITEAU_TEST_MARK": "kept",
    }
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    tree = chapiteau("""
[broker]
user = nobody
supervisor_env = CHAPITEAU_TEST_MARK LISTEN_* NOTIFY_SOCKET

[watcher:w]
cmd = sleep 1000
copy_env = true
""")
    [worker] = tree.worker_pids("w", 1)
    env = environ(worker)
    assert env["CHAPITEAU_TEST_MARK"] == "kept"
    assert not {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(env)
    assert not {"CHAPITEAU_BROKER_FD", "CHAPITEAU_SUPERVISOR_START"} & set(env)
