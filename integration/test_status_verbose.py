"""``chapiteauctl status -v`` tells the truth about a crash-looping watcher: backing off,
with its next attempt time, its processes by wid and its exit status for scripts."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from integration.harness import free_port, wait_until
from integration.test_chapiteauctl import Ctl

BACKING_OFF = re.compile(
    r"^crash: backing off \(next attempt (\S+)Z, in ([0-9.]+) s; (\d+) failed rounds\)$"
)


def config(endpoint: str, pubsub: str) -> str:
    return f"""
[circus]
endpoint = {endpoint}
pubsub_endpoint = {pubsub}

[broker]
user = nobody

[watcher:crash]
cmd = sh -c 'exit 3'

[watcher:sleeper]
cmd = sleep 1000
numprocesses = 2
"""


@pytest.fixture
def ctl(chapiteau) -> Ctl:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    tree = chapiteau(config(endpoint, f"tcp://127.0.0.1:{free_port()}"))
    tree.worker_pids("sleeper", 2)
    client = Ctl(endpoint)
    wait_until(lambda: client("list", timeout=1).returncode == 0)
    return client


def test_status_verbose_shows_a_crash_loop_backing_off_with_its_next_attempt(ctl: Ctl) -> None:
    def backing_off() -> bool:
        result = ctl("status", "-v", "crash")
        return bool(BACKING_OFF.match(result.stdout.splitlines()[0]))

    wait_until(backing_off)
    before = time.time()
    result = ctl("status", "-v", "crash")
    assert result.returncode == 3, result
    phase, header, slot = result.stdout.splitlines()
    match = BACKING_OFF.match(phase)
    assert match, phase
    at = datetime.fromisoformat(match[1] + "+00:00").timestamp()
    assert before - 1 <= at <= before + 61
    assert float(match[2]) <= 60 and int(match[3]) >= 2
    assert header.split() == [
        *("WID", "PID", "STATE", "UPTIME", "RESTARTS", "LAST", "EXIT", "READY", "STATUS")
    ]
    wid, pid, state, rest = re.split(r"\s{2,}", slot.strip(), maxsplit=3)
    assert (wid, pid, state) == ("1", "-", "backing off")
    uptime, restarts, last_exit, ready = re.split(r"\s{2,}", rest)
    assert uptime == "-" and int(restarts) >= 1 and ready == "-"
    assert last_exit == "exit 3 (exited too quickly)"
    # Circus's reply is unchanged: circusctl still reads "active".
    assert ctl.out("status", "crash") == "active\n"


def test_status_verbose_exits_0_when_every_watcher_is_active(ctl: Ctl) -> None:
    result = ctl("status", "-v", "sleeper")
    assert result.returncode == 0, result
    phase, _, *slots = result.stdout.splitlines()
    assert phase == "sleeper: active"
    rows = [re.split(r"\s{2,}", slot.strip()) for slot in slots]
    assert [row[0] for row in rows] == ["1", "2"]
    for _, pid, state, _, restarts, last_exit, ready in rows:
        assert pid.isdigit() and state == "running" and restarts == "0" and last_exit == "-"
        assert ready == "yes"
    wait_until(lambda: ctl("status", "-v").returncode == 3)  # crash is not active
