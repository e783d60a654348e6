"""Races the service user runs against the broker's root file operations, played for real.

A process running as nobody swaps names with renameat2(RENAME_EXCHANGE) in a
loop, bounded in time, while the broker works on a path in a directory nobody
owns. Before issue 8's fixes the broker lost these races (chown and chmod by
path followed a link swapped in after its check); now such a directory is
refused before anything is created in it. Needs root; skipped otherwise.
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

import pytest

from chapiteau.broker.binding import BindError, abandon
from chapiteau.broker.broker import listen_for_supervisors
from tests.specs import USER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays nobody against root: root")

NOBODY = pwd.getpwnam("nobody")
RACE_SECONDS = 10.0
EXCHANGE = """
import ctypes, sys, time
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
AT_FDCWD, RENAME_EXCHANGE = -100, 2
first, second = sys.argv[1].encode(), sys.argv[2].encode()
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    renameat2(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE)
"""


def as_nobody(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        list(argv), user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[], start_new_session=True
    )


@pytest.fixture
def base() -> Iterator[Path]:
    """A root directory nobody can reach (pytest's own tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="chapiteau-race-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def theirs(base: Path) -> Path:
    path = base / "theirs"
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


@pytest.fixture
def secret(base: Path) -> Path:
    path = base / "secret"
    path.write_text("root only\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def exchanging(first: Path, second: Path) -> Iterator[float]:
    """nobody swaps ``first`` and ``second`` in a loop; yields the deadline of the race."""
    racer = as_nobody(sys.executable, "-c", EXCHANGE, str(first), str(second), str(RACE_SECONDS))
    try:
        yield time.monotonic() + RACE_SECONDS
    finally:
        racer.kill()
        racer.wait(5)


def test_connect_mode_chown_cannot_be_swapped_onto_a_root_file(theirs, secret):
    assert as_nobody("ln", "-s", str(secret), str(theirs / "decoy")).wait(5) == 0
    path = theirs / "broker.sock"
    refused = ""
    with exchanging(path, theirs / "decoy") as deadline:
        while time.monotonic() < deadline and os.stat(secret).st_gid == 0:
            try:
                listener, entry = listen_for_supervisors(str(path), USER)
            except BindError as exc:
                # Lost rounds of the old code ("not a socket") go on; the refusal ends the race.
                refused = str(exc)
                if "writable by the service user" in refused:
                    break
                continue
            abandon(listener, entry)
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)
    assert f"the directory {theirs} is writable by the service user 'nobody'" in refused
