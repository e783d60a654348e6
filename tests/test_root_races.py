"""Races the service user runs against the broker's root file operations, played for real.

A process running as nobody swaps names with renameat2(RENAME_EXCHANGE) in a
loop, bounded in time, while the broker works on a path in a directory nobody
owns. Before issue 8's fixes the broker lost these races (chown and chmod by
path followed a link swapped in after its check); now such a directory is
refused before anything is created in it. Needs root; skipped otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.binding import BindError, abandon
from chapiteau.broker.broker import listen_for_supervisors
from tests.nobody import (
    assert_untouched,
    directory_of_nobody,
    exchanging,
    plant,
    reachable_directory,
    root_secret,
)
from tests.specs import USER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays nobody against root: root")

RACE_SECONDS = 10.0


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_directory("chapiteau-race-") as path:
        yield path


def test_connect_mode_chown_cannot_be_swapped_onto_a_root_file(base):
    theirs = directory_of_nobody(base / "theirs")
    secret = root_secret(base / "secret")
    plant(theirs / "decoy", secret)
    path = theirs / "broker.sock"
    refused = ""
    with exchanging(path, theirs / "decoy", RACE_SECONDS) as deadline:
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
    assert_untouched(secret)
    assert f"the directory {theirs} is writable by the service user 'nobody'" in refused
