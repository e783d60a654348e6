"""Tell whoever started ``chapiteau`` how start-up ended: the service runs, or why it does not.

In the foreground without ``--log-output`` the log itself is on the caller's
stderr and says it all. With ``--log-output`` the caller's stderr stays open
until the first supervisor is ready, and a failed start-up copies the
supervisor's last lines there. With ``--daemon`` the command the operator
typed waits, on a pipe from the detached broker, until the first supervisor is
ready (exit 0) or start-up failed (that status, and the same lines on its
stderr): an init script sees the outcome, not a detached child's hopes. It
waits ``--start-timeout`` at most: a daemon still starting then is left to go
on, and the command says so and returns, so that an init script never hangs.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import time
from collections.abc import Iterable

from chapiteau.protocol.log_lines import fatal_line

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

NO_REPORT = 1
"""The --daemon parent's exit status when the daemon died without a word."""
STILL_STARTING = 75
"""The --daemon parent's exit status when the daemon still starts after --start-timeout.

EX_TEMPFAIL of sysexits.h: the outcome is not known yet, the daemon runs on.
"""
START_TIMEOUT = 90.0
"""--start-timeout's default, in seconds: systemd's default start timeout."""


class StartupReport:
    """The one outcome of start-up, sent once: `ready` or `failed`."""

    def __init__(
        self, console: TextIO | None, fmt: str = "console", to_parent: bool = False
    ) -> None:
        self._console = console
        self._format = fmt
        self._to_parent = to_parent
        self.done = False

    def ready(self) -> None:
        """The service runs: release the caller."""
        if self._to_parent:
            self._write("0\n")
        self._close()

    def failed(self, status: int, message: str, output: Iterable[str] = ()) -> None:
        """Start-up failed with exit ``status``: the supervisor's last lines, then why."""
        lines = [*output, fatal_line("chapiteau", self._format, message)]
        text = "".join(f"{line}\n" for line in lines)
        self._write(f"{status}\n{text}" if self._to_parent else text)
        self._close()

    def _write(self, text: str) -> None:
        if self._console is not None and not self.done:
            with contextlib.suppress(OSError):
                self._console.write(text)
                self._console.flush()

    def _close(self) -> None:
        self.done = True
        if self._console is not None:
            with contextlib.suppress(OSError):
                self._console.close()
            self._console = None


def daemonize(console: TextIO, fmt: str, timeout: float, log_output: str) -> StartupReport:
    """Double fork and new session; the foreground process waits for the outcome and exits.

    Only the detached grandchild returns, with stdin on /dev/null (stdout and
    stderr already point at the log file ``log_output``) and the report that
    releases the foreground process, which then prints what it was told on
    ``console`` (in the log format ``fmt``) and exits with the status it was
    given; or, when ``timeout`` seconds (0: no limit) pass first, says that the
    daemon still starts and exits with `STILL_STARTING`.
    """
    reader, writer = os.pipe()
    if os.fork():
        os.close(writer)
        os._exit(_wait_for_daemon(reader, console, fmt, timeout, log_output))
    os.close(reader)
    os.setsid()
    if os.fork():
        os._exit(0)
    # The report's first line: which process the caller leaves running if it stops waiting.
    with contextlib.suppress(OSError):
        os.write(writer, f"{os.getpid()}\n".encode())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    console.close()
    return StartupReport(os.fdopen(writer, "w"), fmt, to_parent=True)


def _wait_for_daemon(
    reader: int, console: TextIO, fmt: str, timeout: float, log_output: str
) -> int:
    """Read the daemon's report to its end (or ``timeout``); print it; return its exit status."""
    received, complete = _read_report(reader, timeout)
    pid, _, report = received.decode(errors="replace").partition("\n")
    status_line, _, text = report.partition("\n")
    if not complete:
        status = STILL_STARTING
        why = (
            f"the daemon (pid {pid or '?'}) is still starting after {timeout:g} s "
            f"(--start-timeout); it runs on, and its log ({log_output}) says why it is not ready"
        )
        text = fatal_line("chapiteau", fmt, why) + "\n"
    elif status_line.isdigit():
        status = int(status_line)
    else:
        status = NO_REPORT
        why = "the daemon exited during start-up; its log says why"
        text = fatal_line("chapiteau", fmt, why) + "\n"
    console.write(text)
    console.flush()
    return status


def _read_report(reader: int, timeout: float) -> tuple[bytes, bool]:
    """What the daemon wrote on ``reader``; whether it closed it in ``timeout`` s (0: no limit)."""
    deadline = time.monotonic() + timeout if timeout else math.inf
    poller = select.poll()
    poller.register(reader, select.POLLIN)
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(None if math.isinf(left) else math.ceil(left * 1000)):
            chunk = os.read(reader, 65536)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    return b"".join(chunks), False
