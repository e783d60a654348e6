"""``chapiteau --check-config``: run by an operator beside a running chapiteau, it changes nothing.

It reports the problems a start would refuse (one line each, exit 1) and
otherwise says so (exit 0), without binding, creating or writing anything,
so it can check an edited config before a reload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from integration.harness import DEFAULT_TIMEOUT
from tests.nobody import directory_of_nobody


def check_config(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chapiteau.broker", "--check-config", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=DEFAULT_TIMEOUT,
    )


def test_check_config_beside_a_running_chapiteau_finds_nothing_and_changes_nothing(
    chapiteau, workdir
):
    tree = chapiteau(f"[broker]\nuser = nobody\n\n[socket:app]\npath = {workdir}/app.sock\n")
    tree.wait_for("supervisor_ready")
    inode = os.lstat(workdir / "app.sock").st_ino
    result = check_config(tree.config_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"chapiteau: {tree.config_path}: no problem found\n"
    assert os.lstat(workdir / "app.sock").st_ino == inode
    assert tree.process is not None and tree.process.poll() is None


def test_check_config_reports_an_unsafe_log_file_and_creates_nothing(workdir):
    theirs = directory_of_nobody(workdir / "theirs")
    config = workdir / "chapiteau.ini"
    config.write_text(f"[circus]\nlogoutput = {theirs}/circus.log\n\n[broker]\nuser = nobody\n")
    result = check_config(config)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"chapiteau: log output: {theirs}/circus.log: the directory {theirs}")
    assert list(theirs.iterdir()) == []
