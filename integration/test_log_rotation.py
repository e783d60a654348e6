"""Logs as a log shipper and logrotate see them: JSON everywhere, UTC, reopened on USR1.

logrotate (the Debian package) rotates ``--log-output`` by rename, its
default, and its postrotate sends USR1 to the pid in the broker's pidfile.
Every line written once the broker reopened the file is in the new file, and
with ``--log-format json`` every line of both files is a JSON object with an
RFC 3339 UTC timestamp, worker output (no stream configured) included, also
when the local time zone is not UTC.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from integration.conftest import BROKER_USER, broker_directory
from integration.harness import DEFAULT_TIMEOUT

CHATTY = """\
import itertools, sys, time
for n in itertools.count():
    print(f"chatty line {n}", flush=True)
    print(f"chatty error {n}", file=sys.stderr, flush=True)
    time.sleep(0.02)
"""
CONFIG = """\
[broker]
user = nobody

[watcher:chatty]
cmd = {python} -u {workdir}/chatty.py
"""
ROTATE = """\
{log} {{
    rotate 1
    nocompress
    {create}
    postrotate
        kill -USR1 "$(cat {pidfile})"
    endscript
}}
"""


def wait_for_text(path: Path, text: str, after: int = 0) -> int:
    """Wait until ``text`` is in ``path`` past byte ``after``; the offset where it ends."""
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while True:
        data = path.read_text() if path.exists() else ""
        found = data.find(text, after)
        if found >= 0:
            return found + len(text)
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {path}:\n{data[-3000:]}")
        time.sleep(0.05)


def assert_json_with_utc_timestamps(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        assert isinstance(event, dict) and "event" in event and "level" in event, line
        stamp = event["timestamp"]
        assert stamp.endswith("Z"), line
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), line
        events.append(event)
    return events


@pytest.mark.parametrize(
    ("log_format", "create"),
    [
        # The broker creates the new file itself, as its own account, mode 0640.
        ("json", "nocreate"),
        # logrotate creates it for the broker's account; the broker opens it.
        ("console", f"create 0640 {BROKER_USER} {BROKER_USER}"),
    ],
)
def test_logrotate_in_rename_mode_then_usr1_moves_every_new_line_to_the_new_file(
    chapiteau, workdir, monkeypatch, log_format, create
):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    (workdir / "chatty.py").write_text(CHATTY)
    (workdir / "chatty.py").chmod(0o644)
    logs = broker_directory(workdir, "log")
    log, rotated = logs / "chapiteau.log", logs / "chapiteau.log.1"
    pidfile = broker_directory(workdir) / "chapiteau.pid"
    rotate = workdir / "logrotate.conf"
    rotate.write_text(ROTATE.format(log=log, create=create, pidfile=pidfile))
    rotate.chmod(0o644)
    config = CONFIG.format(python=sys.executable, workdir=workdir)
    tree = chapiteau(
        config,
        "--log-output",
        str(log),
        "--pidfile",
        str(pidfile),
        "--log-format",
        log_format,
    )
    wait_for_text(log, "chatty line 3")
    wait_for_text(log, "chatty error 3")

    subprocess.run(
        ["logrotate", "--force", "--state", str(workdir / "logrotate.state"), str(rotate)],
        check=True,
        timeout=DEFAULT_TIMEOUT,
    )
    reopened = wait_for_text(log, "log_reopened")
    old_size = rotated.stat().st_size
    # Plenty of lines from the broker, the supervisor and the workers after the reopen.
    wait_for_text(log, "chatty line", after=reopened)
    wait_for_text(log, "chatty error", after=reopened)
    tree.stop()
    wait_for_text(log, "broker_stopped", after=reopened)

    assert rotated.stat().st_size == old_size
    assert "log_reopened" not in rotated.read_text()
    assert log.stat().st_uid != 0
    if log_format == "json":
        events = assert_json_with_utc_timestamps(rotated) + assert_json_with_utc_timestamps(log)
        outputs = [e for e in events if e["event"] == "worker_output"]
        assert {e["stream"] for e in outputs} == {"stdout", "stderr"}
        assert all(e["watcher"] == "chatty" and e["pid"] > 0 for e in outputs)
