"""Worker output with no stream configured: one log event a line, in the supervisor's log.

Circus lets such a worker write to the daemon's own stdout and stderr.
chapiteau reads it through the redirector like any stream's pipe and logs
each line as a ``worker_output`` event carrying the watcher, the pid and the
stream ("stdout" or "stderr"), so that the log stays in one format (a JSON
log stays JSON). These events are logged whatever ``--log-level`` says, as
circusd's workers' output is. Lines are cut where the worker's writes end: a line the
worker writes in pieces, or longer than one read, may become several events.
"""

from __future__ import annotations

import structlog

from chapiteau.supervisor.io.streams import Chunk

# Never filtered by the log level: the output is the workers', not the supervisor's chatter.
log = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(0))


class WorkerOutputLog:
    """A stream (in the Circus sense) that logs each line of a chunk as an event."""

    def __init__(self, watcher: str) -> None:
        self.watcher = watcher

    def __call__(self, chunk: Chunk) -> None:
        text = chunk["data"].decode("utf-8", "backslashreplace")
        for line in text.removesuffix("\n").split("\n"):
            log.info(
                "worker_output",
                watcher=self.watcher,
                pid=chunk["pid"],
                stream=chunk["name"],
                line=line.removesuffix("\r"),
            )
