"""The service user as the attacker of the tests: its directories, its processes, its races.

Shared by the fast tests and the integration tests that play a compromised
service user (nobody) against the root broker. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

NOBODY = pwd.getpwnam("nobody")
SECRET = "root only\n"
EXCHANGE = """
import ctypes, sys, time
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
AT_FDCWD, RENAME_EXCHANGE = -100, 2
first, second = sys.argv[1].encode(), sys.argv[2].encode()
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    renameat2(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE)
"""
"""nobody's race: swap two names atomically, again and again, until a deadline."""
LINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"


@contextlib.contextmanager
def reachable_directory(prefix: str) -> Iterator[Path]:
    """A fresh root directory (0755) the service user can enter but not write.

    pytest's own tmp_path is under a root-only directory, out of nobody's reach.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def directory_of_nobody(path: Path) -> Path:
    """Make ``path`` a directory that the service user owns."""
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def root_secret(path: Path) -> Path:
    """A root file that the service user must never get changed: 0600 root:root."""
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def assert_untouched(secret: Path) -> None:
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert secret.read_text() == SECRET


def as_nobody(code: str, *args: str) -> subprocess.Popen:
    """Run Python ``code`` as the service user, in its own session."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_as_nobody(code: str, *args: str, timeout: float = 15.0) -> None:
    assert as_nobody(code, *args).wait(timeout) == 0


def plant(link: Path, target: Path) -> None:
    """nobody makes ``link`` a symbolic link to ``target``."""
    run_as_nobody(LINK, str(target), str(link))


@contextlib.contextmanager
def exchanging(first: Path, second: Path, seconds: float) -> Iterator[float]:
    """nobody swaps ``first`` and ``second`` for ``seconds``; yields the deadline of the race."""
    racer = as_nobody(EXCHANGE, str(first), str(second), str(seconds))
    try:
        yield time.monotonic() + seconds
    finally:
        racer.kill()
        racer.wait(5)
