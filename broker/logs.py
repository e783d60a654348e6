"""The broker's log output: its events and relayed lines, written without ever blocking.

Whatever the broker's stdout and stderr are (a terminal, a file, a pipe to
``logger``, journald's stream socket), writing a log line must neither raise
nor stall the event loop: a reader that stopped reading costs log lines, never
the listening sockets. A `LogSink` therefore writes to a pipe only what the
kernel takes at once (``poll()`` says writable, at most PIPE_BUF bytes per
write, which a pipe accepts whole), to a socket with MSG_DONTWAIT, and to a
file or terminal plainly. A line that does not fit is dropped and counted; the
count is logged once writing works again. The file description itself is never
made non-blocking: the broker may share it with whoever started it.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import sys

from chapiteau.broker.event_log import log
from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.safe_paths import UnsafePathError, append_in, open_parent
from chapiteau.protocol.log_lines import as_json_event

PIPE_BUF = select.PIPE_BUF


class LogSink:
    """Whole lines to one fd; a line the fd cannot take now is dropped, never waited for."""

    def __init__(self, fd: int, json_lines: bool = False) -> None:
        self.fd = fd
        self.json_lines = json_lines
        """The log is JSON lines: a relayed line that is not one becomes an event carrying it."""
        self.dropped = 0
        self._cut = False
        """A line was cut short: the next one starts on a new line."""
        mode = _mode(fd)
        self._writable: select.poll | None = None
        """For a pipe: whether a write would block, asked before each write."""
        if stat.S_ISFIFO(mode):
            self._writable = select.poll()
            self._writable.register(fd, select.POLLOUT)
        self._socket = socket.socket(fileno=os.dup(fd)) if stat.S_ISSOCK(mode) else None

    def msg(self, message: str) -> None:
        """One rendered event of the broker's event log."""
        self.write_line(message.encode("utf-8", "backslashreplace") + b"\n")

    def relay(self, line: bytes, source: str) -> None:
        """Write a line the supervisor wrote on ``source`` (without its newline)."""
        if self.json_lines:
            text = line.decode("utf-8", "backslashreplace")
            line = as_json_event(text, "supervisor_output", stream=source).encode()
        self.write_line(line + b"\n")

    def write_line(self, line: bytes) -> None:
        """Write ``line`` (which ends with a newline) now, or drop it."""
        if self._cut:
            line = b"\n" + line
        written = self._write_now(line)
        if written < len(line):
            self.dropped += 1
            self._cut = written > 0
            return
        self._cut = False
        if self.dropped:
            count, self.dropped = self.dropped, 0
            log.warning("log_lines_dropped", count=count, reason="the log output was not writable")

    def _write_now(self, data: bytes) -> int:
        """How many bytes of ``data`` the fd took without blocking."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += self._write_some(view[done:])
        except OSError:
            pass
        return done

    def _write_some(self, view: memoryview) -> int:
        if self._socket is not None:
            return self._socket.send(view, socket.MSG_DONTWAIT)
        if self._writable is not None:
            if not self._writable.poll(0):
                raise BlockingIOError
            return os.write(self.fd, view[:PIPE_BUF])
        return os.write(self.fd, view)


def _mode(fd: int) -> int:
    try:
        return os.fstat(fd).st_mode
    except OSError:
        return 0


def configure_logging(level: str = "info", fmt: str = "console") -> LogSink:
    """Send the broker's events to stderr, filtered by ``level``, rendered as ``fmt``.

    Returns the sink on stderr, for lines relayed from the supervisor.
    """
    sink = LogSink(sys.stderr.fileno(), fmt == "json")
    log.configure(level, fmt, sink, colours=sys.stderr.isatty())
    if fmt == "json":
        sys.excepthook = _log_uncaught
    return sink


def _log_uncaught(_kind: type[BaseException], error: BaseException, _traceback: object) -> None:
    """A bug's traceback, as one event of the JSON log instead of raw lines."""
    log.critical("uncaught_exception", exc_info=error)


class LogFile:
    """``--log-output``: the file fds 1 and 2 point at, opened again by name on USR1.

    The directory is opened (verified, as broker/safe_paths.py does) once at
    start and kept, so that the confined broker reopens the file relative to
    it: by name, never through a link (O_NOFOLLOW), creating it with mode 0640
    as the broker's own account when the rotation left no file. Landlock lets
    the broker write and create files in this one directory (broker/confinement.py).
    """

    def __init__(self, path: str, user: ServiceUser) -> None:
        self.path = path
        try:
            self.directory, self.name = open_parent(path, user, follow=True)
        except UnsafePathError as exc:
            raise UnsafePathError(f"log output: {exc}") from None

    def point_standard_fds(self) -> None:
        """Open the file and point fds 1 and 2 at it (close-on-exec: nothing execs the broker)."""
        fd = append_in(self.directory, self.name)
        try:
            os.dup2(fd, 1, inheritable=False)
            os.dup2(fd, 2, inheritable=False)
        finally:
            os.close(fd)

    def reopen(self) -> None:
        """After a rotation: write to the file that now has the name; keep the old one on error."""
        try:
            self.point_standard_fds()
        except (OSError, UnsafePathError) as exc:
            log.error("log_reopen_failed", path=self.path, error=str(exc))
            return
        log.info("log_reopened", path=self.path)
