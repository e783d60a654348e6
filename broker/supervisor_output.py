"""Relay what the supervisor and its workers write on stdout and stderr into the broker's log.

The supervisor never shares the broker's own stdout and stderr: it writes into
a pipe that only the broker reads (a shared open file description would let
it make the broker's writes non-blocking, or fill the pipe the broker logs
to). The broker reads the pipe in its event loop, a bounded amount per
wake-up, cuts it into lines of at most MAX_LINE bytes, and writes each line
through its own `LogSink` (which, in a JSON log, wraps a line that is not a
JSON object into an event). The last lines are kept, to show why a supervisor
that never became ready died.
"""

from __future__ import annotations

import os
import select
from collections import deque

from chapiteau.broker.logs import LogSink

READ_SIZE = 64 * 1024
MAX_LINE = 16 * 1024
"""A longer line is cut into lines of this size."""
KEPT_LINES = 20
DRAIN_READS = 16
"""At most this many reads when the output is drained at once (a worker may still be writing)."""


class OutputRelay:
    """The read end of one supervisor's stdout or stderr pipe, relayed line by line."""

    def __init__(self, fd: int, sink: LogSink, recent: deque[bytes], source: str) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.sink = sink
        self.source = source
        """"stdout" or "stderr": where the supervisor wrote these lines."""
        self.recent = recent
        """The last lines, shared by the stdout and stderr relays of one supervisor."""
        self._partial = b""

    def read(self) -> bool:
        """Relay what one read gives; False at end of file (every writer closed the pipe)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            if self._partial:
                self._relay(self._partial)
                self._partial = b""
            return False
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._relay(line)
        while len(self._partial) >= MAX_LINE:
            self._relay(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        return True

    def drain(self) -> bool:
        """Relay what is in the pipe now (bounded); False at end of file."""
        for _ in range(DRAIN_READS):
            if not self.read():
                return False
            if not _readable(self.fd):
                break
        return True

    def close(self) -> None:
        os.close(self.fd)

    def _relay(self, line: bytes) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE):
            piece = line[start : start + MAX_LINE]
            self.recent.append(piece)
            self.sink.relay(piece, self.source)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def recent_lines() -> deque[bytes]:
    """A buffer of the last KEPT_LINES lines, for the relays of one supervisor."""
    return deque(maxlen=KEPT_LINES)
