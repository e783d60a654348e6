"""Run the real ``chapiteau`` from an INI file and look at it as an operator would.

A `Chapiteau` is the broker process started with ``python -m chapiteau.broker``
and JSON logs; tests wait for log events, read /proc, send signals and make
HTTP requests. Every process of the tree is remembered by pid and killed at
the end, so a failing test never leaves anything running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chapiteau.supervisor.children.process_tree import descendants
from tests.waiting import wait_until as wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_TIMEOUT = 15.0


class Chapiteau:
    """One broker process (and, through it, a supervisor and workers)."""

    def __init__(self, directory: Path, config: str, args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.config_path = directory / "chapiteau.ini"
        self.config_path.write_text(config)
        self.config_path.chmod(0o644)
        self.log_path = directory / "chapiteau.log"
        self.args = args
        self.process: subprocess.Popen | None = None
        self.seen: set[int] = set()
        self._offset = 0
        self.events: list[dict[str, Any]] = []

    def start(
        self,
        stdio_closed: bool = False,
        prefix: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> Chapiteau:
        """Start the broker; with ``stdio_closed`` its fds 0-2 are closed (logs: --log-output).

        ``prefix`` runs first and execs the broker (``setpriv ...``, ``unshare ...``, or a
        stand-in for systemd that passes ``pass_fds``): then ``pid`` may be the prefix's.
        ``env`` replaces the environment.
        """
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "chapiteau.broker",
                str(self.config_path),
                "--log-format",
                "json",
                "--log-level",
                "debug",
                *self.args,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            start_new_session=True,
            preexec_fn=_close_stdio if stdio_closed else None,
            pass_fds=pass_fds,
            env=env,
        )
        log.close()
        self.seen.add(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def read_events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (other lines are skipped)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for line in data[:complete].splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and "event" in event:
                    self.events.append(event)
        self.track_tree()
        return self.events

    def events_named(
        self, event: str, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The log events named ``event`` so far (those matching ``where``, if given)."""
        return [
            e for e in self.read_events() if e["event"] == event and (where is None or where(e))
        ]

    def wait_for(
        self,
        event: str,
        timeout: float = DEFAULT_TIMEOUT,
        where: Callable[[dict[str, Any]], bool] | None = None,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log events named ``event`` (matching ``where``) were logged."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events_named(event, where)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {count}x {event!r} within {timeout}s; log:\n{self.log_path.read_text()}"
                )
            if self.process is not None and self.process.poll() is not None and not found:
                raise AssertionError(
                    f"chapiteau exited {self.process.returncode} before {event!r}; log:\n"
                    f"{self.log_path.read_text()}"
                )
            time.sleep(0.02)

    def supervisor_pid(self) -> int:
        return self.wait_for("supervisor_started")[-1]["pid"]

    def worker_pids(self, watcher: str, count: int) -> list[int]:
        """Pids of the ``count`` most recent workers of ``watcher`` that are still alive."""
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while True:
            spawned = [
                e["pid"]
                for e in self.events_named("process_spawned", lambda e: e.get("watcher") == watcher)
            ]
            alive = [pid for pid in spawned if is_alive(pid)]
            if len(alive) >= count:
                return alive[-count:]
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers of {watcher} not alive: {spawned}")
            time.sleep(0.02)

    def track_tree(self) -> None:
        """Remember every descendant's pid, so that cleanup can reach it."""
        if self.process is not None:
            self.seen.update(descendants(self.process.pid))

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """SIGTERM the broker and wait for it; returns its exit status."""
        assert self.process is not None
        self.track_tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def shut_down(self, grace: float = 5.0) -> None:
        """End of a test: stop chapiteau the way an operator would, then kill what is left."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(timeout=grace)
        self.kill_everything()

    def again(self) -> Chapiteau:
        """Start a second chapiteau on this one's config file, logging to its own file (a
        broker started again after a crash or to upgrade it)."""
        second = Chapiteau(self.directory, self.config_path.read_text(), self.args)
        second.log_path = self.directory / "second.log"
        return second.start()

    def kill_everything(self) -> None:
        """Last-resort cleanup: SIGKILL every process of the tree this test saw."""
        self.track_tree()
        top = [self.process.pid] if self.process is not None else []
        kill_tree(top + sorted(self.seen - set(top)))
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def kill_together(*pids: int) -> None:
    """SIGKILL ``pids`` at once: stopped first, so that none sees another die."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(is_alive(pid) for pid in pids))


def _close_stdio() -> None:
    os.closerange(0, 3)


def kill_tree(pids: list[int]) -> None:
    """SIGKILL ``pids`` and all their descendants, every one frozen (SIGSTOP) before any dies.

    Killed one by one, a supervisor killed after its worker would respawn that
    worker in between, out of reach of the cleanup.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGSTOP)
    for pid in [*pids, *(child for parent in pids for child in descendants(parent))]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def argv(pid: int) -> list[str]:
    """The command line of ``pid``; [] once it is gone (or before its exec wrote one)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [os.fsdecode(word) for word in cmdline.read().split(b"\0")[:-1]]
    except OSError:
        return []


def exec_done(pid: int) -> None:
    """Wait until ``pid`` has finished its exec, or is gone.

    The supervisor reports a worker as soon as its spawn returns, which is when
    the exec has replaced the memory, not when it is over: for a moment more
    /proc still shows the supervisor's close-on-exec fds, and an empty
    environment and command line, which the kernel writes last.
    """
    wait_until(lambda: argv(pid) or not is_alive(pid), what=f"the exec of {pid}")


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with, from /proc/PID/environ."""
    exec_done(pid)
    with open(f"/proc/{pid}/environ", "rb") as data:
        pairs = [item.split(b"=", 1) for item in data.read().split(b"\0") if b"=" in item]
    return {os.fsdecode(key): os.fsdecode(value) for key, value in pairs}


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field → value."""
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def open_fds(pid: int) -> dict[int, str]:
    """fd number → what it points at, for every open fd of ``pid`` (once its exec is over)."""
    exec_done(pid)
    result = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            result[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return result


def socket_inodes(pid: int) -> set[str]:
    return {target for target in open_fds(pid).values() if target.startswith("socket:")}


def tcp_sockets() -> dict[str, tuple[int, str]]:
    """inode → (local port, state) for every IPv4 TCP socket in /proc/net/tcp ("0A": LISTEN)."""
    found = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            found[fields[9]] = (int(fields[1].split(":")[1], 16), fields[3])
    return found


def http_get(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> str:
    """A minimal HTTP/1.0 GET of / on loopback; returns the body."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        return read_response(conn)


def read_response(conn: socket.socket) -> str:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body.decode()


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on, never the same twice in one test run."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
