"""LogFile: --log-output on fds 1 and 2, opened again by name after a rotation (USR1)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from chapiteau.broker.event_log import log
from chapiteau.broker.logs import LogFile, LogSink
from tests.specs import USER


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child (it points fds 1 and 2 elsewhere); its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            log.configure("info", "json", LogSink(2))
            work()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_after_a_rename_reopen_writes_to_a_new_file_of_mode_0640(tmp_path: Path):
    tmp_path.chmod(0o755)
    path = tmp_path / "chapiteau.log"

    def work() -> None:
        log_file = LogFile(str(path), USER)
        log_file.point_standard_fds()
        os.write(2, b"before\n")
        os.rename(path, tmp_path / "chapiteau.log.1")
        os.write(2, b"between\n")
        log_file.reopen()
        os.write(1, b"after\n")
        os.write(2, b"after\n")

    assert in_child(work) == 0
    assert (tmp_path / "chapiteau.log.1").read_bytes() == b"before\nbetween\n"
    assert path.read_text().endswith("after\nafter\n")
    assert "log_reopened" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_link_left_at_the_name_is_not_followed_and_the_old_file_is_kept(tmp_path: Path):
    tmp_path.chmod(0o755)
    path = tmp_path / "chapiteau.log"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")

    def work() -> None:
        log_file = LogFile(str(path), USER)
        log_file.point_standard_fds()
        os.rename(path, tmp_path / "chapiteau.log.1")
        path.symlink_to(target)
        log_file.reopen()
        os.write(2, b"still here\n")

    assert in_child(work) == 0
    assert target.read_bytes() == b""
    rotated = (tmp_path / "chapiteau.log.1").read_text()
    assert "log_reopen_failed" in rotated and rotated.endswith("still here\n")
