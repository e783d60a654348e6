"""WorkerOutputLog: output of a worker with no stream, one log event a line."""

from __future__ import annotations

import logging

import structlog
from structlog.testing import capture_logs

from chapiteau.supervisor.io.worker_log import WorkerOutputLog


def test_each_line_of_a_chunk_is_an_event_with_watcher_pid_and_stream_whatever_the_level():
    stream = WorkerOutputLog("chatty")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        with capture_logs() as events:
            stream({"data": b"chatty line 0\r\nchatty line 1\n\xff", "pid": 42, "name": "stderr"})
    finally:
        structlog.reset_defaults()
    assert events == [
        {
            "event": "worker_output",
            "log_level": "info",
            "watcher": "chatty",
            "pid": 42,
            "stream": "stderr",
            "line": line,
        }
        for line in ("chatty line 0", "chatty line 1", "\\xff")
    ]
