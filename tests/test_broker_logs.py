"""The broker's log output: a line it cannot take costs that line, never a wait; JSON stays JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from chapiteau.broker.event_log import log
from chapiteau.broker.logs import PIPE_BUF, LogSink


def fill(fd: int) -> None:
    """Fill the pipe behind ``fd`` to the last byte, through a description of our own."""
    own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        for chunk in (b"x" * 1000, b"x"):
            while True:
                try:
                    os.write(own, chunk)
                except BlockingIOError:
                    break
    finally:
        os.close(own)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    reader, writer = os.pipe()
    yield reader, writer
    os.close(reader)
    os.close(writer)


def test_a_full_pipe_drops_the_line_without_blocking_or_raising(pipe):
    _, writer = pipe
    fill(writer)
    sink = LogSink(writer)
    sink.write_line(b"lost\n")
    assert sink.dropped == 1
    assert os.get_blocking(writer)


def test_the_drop_count_is_logged_once_writing_works_again(pipe):
    reader, writer = pipe
    sink = LogSink(writer)
    saved = (log.threshold, log.render, log.output)
    log.configure("info", "json", sink)
    try:
        fill(writer)
        sink.write_line(b"lost 1\n")
        sink.write_line(b"lost 2\n")
        drain(reader)
        sink.write_line(b"kept\n")
    finally:
        log.threshold, log.render, log.output = saved
    lines = drain(reader).splitlines()
    assert lines[0] == b"kept"
    event = json.loads(lines[1])
    assert event.pop("timestamp").endswith("Z")
    assert event == {
        "level": "warning",
        "count": 2,
        "reason": "the log output was not writable",
        "event": "log_lines_dropped",
    }
    assert sink.dropped == 0


def test_a_line_longer_than_pipe_buf_goes_whole_when_the_pipe_has_room(pipe):
    reader, writer = pipe
    line = b"y" * (3 * PIPE_BUF) + b"\n"
    LogSink(writer).write_line(line)
    assert drain(reader) == line


def test_a_line_cut_short_is_ended_before_the_next_one(pipe):
    reader, writer = pipe
    sink = LogSink(writer)
    fill(writer)
    room = 3 * PIPE_BUF
    os.read(reader, room)
    sink.write_line(b"z" * (4 * PIPE_BUF) + b"\n")
    assert sink.dropped == 1
    drain(reader)
    sink.write_line(b"next\n")
    assert drain(reader).startswith(b"\nnext\n")


def test_a_socket_that_does_not_read_drops_lines_and_stays_blocking():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sink = LogSink(ours.fileno())
        for _ in range(10_000):
            sink.write_line(b"w" * 100 + b"\n")
        assert sink.dropped > 0
        assert ours.getblocking()


def test_a_closed_fd_drops_lines_without_raising():
    reader, writer = os.pipe()
    sink = LogSink(writer)
    os.close(reader)
    os.close(writer)
    sink.write_line(b"nowhere\n")
    assert sink.dropped == 1


CRASH = """\
from chapiteau.broker.logs import configure_logging
configure_logging("info", "json")
raise ValueError("boom")
"""


def test_in_a_json_log_an_uncaught_exception_is_one_json_event():
    result = subprocess.run(
        [sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "uncaught_exception" and event["level"] == "critical"
    assert "ValueError: boom" in event["exception"]
