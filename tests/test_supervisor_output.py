"""OutputRelay: the supervisor's pipe, relayed in whole lines of bounded length."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from chapiteau.broker.logs import LogSink
from chapiteau.broker.supervisor_output import KEPT_LINES, MAX_LINE, OutputRelay, recent_lines


class Lines(LogSink):
    """A sink that keeps what it is given."""

    def __init__(self, json_lines: bool = False) -> None:
        self.json_lines = json_lines
        self.lines: list[bytes] = []

    def write_line(self, line: bytes) -> None:
        self.lines.append(line)


@pytest.fixture
def relay() -> Iterator[tuple[OutputRelay, int, Lines]]:
    reader, writer = os.pipe()
    sink = Lines()
    relay = OutputRelay(reader, sink, recent_lines(), "stdout")
    yield relay, writer, sink
    relay.close()
    os.close(writer)


def test_lines_are_relayed_whole_and_a_partial_line_waits(relay):
    relay, writer, sink = relay
    os.write(writer, b"one\ntwo\nthr")
    assert relay.read()
    assert sink.lines == [b"one\n", b"two\n"]
    os.write(writer, b"ee\n")
    assert relay.read()
    assert sink.lines[-1] == b"three\n"


def test_nothing_to_read_is_not_the_end(relay):
    relay, _, sink = relay
    assert relay.read()
    assert sink.lines == []


def test_a_long_line_is_cut_into_lines_of_max_line(relay):
    relay, writer, sink = relay
    os.write(writer, b"a" * (MAX_LINE + 10) + b"\nb")
    relay.read()
    assert sink.lines == [b"a" * MAX_LINE + b"\n", b"a" * 10 + b"\n"]


def test_a_line_without_end_is_cut_at_max_line_without_waiting(relay):
    relay, writer, sink = relay
    os.write(writer, b"c" * (MAX_LINE + 1))
    relay.read()
    assert sink.lines == [b"c" * MAX_LINE + b"\n"]


def test_end_of_file_relays_the_partial_line_and_says_so():
    reader, writer = os.pipe()
    sink = Lines()
    relay = OutputRelay(reader, sink, recent_lines(), "stdout")
    os.write(writer, b"last words")
    os.close(writer)
    assert relay.drain() is False
    assert sink.lines == [b"last words\n"]
    relay.close()


def test_the_last_lines_are_kept(relay):
    relay, writer, _ = relay
    os.write(writer, b"".join(b"%d\n" % n for n in range(KEPT_LINES + 5)))
    relay.drain()
    assert list(relay.recent) == [b"%d" % n for n in range(5, KEPT_LINES + 5)]


def test_in_a_json_log_a_relayed_line_that_is_not_json_becomes_an_event():
    reader, writer = os.pipe()
    sink = Lines(json_lines=True)
    relay = OutputRelay(reader, sink, recent_lines(), "stderr")
    try:
        os.write(writer, b'{"event": "already_json"}\nTraceback (most recent call last):\n')
        assert relay.read()
    finally:
        relay.close()
        os.close(writer)
    kept, wrapped = (json.loads(line) for line in sink.lines)
    assert kept == {"event": "already_json"}
    assert wrapped["event"] == "supervisor_output" and wrapped["stream"] == "stderr"
    assert wrapped["line"] == "Traceback (most recent call last):"
