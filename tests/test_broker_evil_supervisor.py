"""The real broker, in socketpair mode, against a hostile supervisor program.

``[broker] supervisor_command`` replaces the supervisor with a script that runs
as the service user (nobody) and gets the broker's channel through
CHAPITEAU_BROKER_FD, as a compromised supervisor would. The broker must outlive
whatever the script does, and still stop in order on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chapiteau.protocol.broker_messages import Hello, ListSockets, Ready, encode
from tests.test_broker_evil_client import json_lines

TIMEOUT = 30.0
RACE_ATTEMPTS = 6
"""Supervisor starts to wait for: the crash this guards against came within 1 to 3."""

FORK_AND_SEND_AFTER_EXIT = """
import os, signal, socket, sys
channel = socket.socket(fileno=int(os.environ["CHAPITEAU_BROKER_FD"]))
frame = bytes.fromhex(sys.argv[1])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# Serving first (hello, ready), so that the broker restarts it when it exits.
for greeting in sys.argv[2:]:
    channel.send(bytes.fromhex(greeting))
    channel.recv(4096)
parent = os.getpid()
ready, spinning = os.pipe()
if os.fork() == 0:
    # The child keeps the channel and writes to it from the instant its parent
    # is gone, reading the replies so that the broker keeps serving it: a
    # frame that lands in the broker's select batch after the SIGCHLD of its
    # parent's exit is the one that used to kill the broker.
    os.write(spinning, b"x")
    while os.getppid() == parent:
        pass
    channel.setblocking(False)
    for _ in range(2000):
        try:
            channel.send(frame)
            while channel.recv(4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            break
    os._exit(0)
os.read(ready, 1)
os._exit(0)
"""


class HostileSupervisor:
    """A broker whose supervisor_command is a hostile script."""

    def __init__(self, directory: Path, script: str, *args: str) -> None:
        program = directory / "supervisor.py"
        program.write_text(script)
        program.chmod(0o644)
        config = directory / "chapiteau.ini"
        command = " ".join([sys.executable, str(program), *args])
        config.write_text(
            f"[broker]\nsupervisor_command = {command}\n\n"
            "[socket:web]\nhost = 127.0.0.1\nport = 0\n"
        )
        config.chmod(0o644)
        self.log_path = directory / "broker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chapiteau.broker", str(config), "--log-format", "json"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def events(self) -> list[dict]:
        return json_lines(self.log_path)

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.process.poll() is None, f"the broker died:\n{self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after TIMEOUT)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(TIMEOUT)
            raise


@pytest.fixture
def directory() -> Iterator[Path]:
    # Readable by nobody, which runs the script (pytest's tmp_path is 0700).
    base = Path(tempfile.mkdtemp(prefix="chapiteau-evil-supervisor-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_frame_sent_by_the_child_of_an_exited_supervisor_does_not_kill_the_broker(
    directory: Path,
) -> None:
    """The race needs the right timing, which a run may or may not get;
    tests/test_broker_peers.py builds it every time, in-process."""
    assert os.geteuid() == 0, "the supervisor runs as nobody: run the tests as root"
    broker = HostileSupervisor(
        directory,
        FORK_AND_SEND_AFTER_EXIT,
        encode(ListSockets(), 1).hex(),
        encode(Hello(), 1).hex(),
        encode(Ready(), 2).hex(),
    )
    try:
        broker.wait_for(
            lambda: any(
                e.get("event") == "supervisor_started" and e.get("start") == RACE_ATTEMPTS
                for e in broker.events()
            ),
            f"{RACE_ATTEMPTS} supervisor starts",
        )
    finally:
        status = broker.stop()
    assert status == 0, broker.log_path.read_text()
