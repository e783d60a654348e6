"""stdout_stream files: written by the supervisor as the service user, rotated, re-opened."""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path

from integration.harness import wait_until

NOBODY = pwd.getpwnam("nobody").pw_uid


def start(chapiteau, workdir: Path, options: str = ""):
    logs = workdir / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    tree = chapiteau(f"""
[broker]
user = nobody

[watcher:talker]
cmd = sh -c 'while :; do echo line-of-output-from-$$; sleep 0.01; done'
stdout_stream.class = FileStream
stdout_stream.filename = {logs}/talker.log
{options}
""")
    return tree, logs / "talker.log"


def test_max_bytes_rotates_into_files_owned_by_the_service_user(chapiteau, workdir):
    _, path = start(
        chapiteau, workdir, "stdout_stream.max_bytes = 300\nstdout_stream.backup_count = 2"
    )
    backups = [Path(f"{path}.1"), Path(f"{path}.2")]
    wait_until(lambda: all(backup.exists() for backup in backups))
    for file in (path, *backups):
        assert file.stat().st_uid == NOBODY
        assert file.stat().st_size <= 300
    assert "line-of-output-from-" in backups[0].read_text()
    assert not Path(f"{path}.3").exists()


def test_sigusr1_reopens_the_file_after_a_logrotate_rename(chapiteau, workdir):
    tree, path = start(chapiteau, workdir)
    wait_until(lambda: path.exists() and path.stat().st_size > 0)
    rotated = path.with_name("talker.log.old")
    path.rename(rotated)

    os.kill(tree.pid, signal.SIGUSR1)

    tree.wait_for("logs_reopened")
    wait_until(lambda: path.exists() and "line-of-output-from-" in path.read_text())
    assert path.stat().st_uid == NOBODY
    size = rotated.stat().st_size
    wait_until(lambda: path.stat().st_size > 200)
    assert rotated.stat().st_size == size
