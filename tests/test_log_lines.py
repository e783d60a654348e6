"""protocol/log_lines.py: the shape of a log line, UTC timestamps, fatal and relayed lines."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from chapiteau.protocol.log_lines import (
    LOG_PROCESSORS,
    as_json_event,
    fatal_line,
    json_line,
    utc_timestamp,
)


def test_a_timestamp_is_rfc3339_in_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        tokyo = datetime(2026, 11, 30, 16, 51, 0, 123456, tzinfo=timezone(timedelta(hours=9)))
        tokyo_ns = int(tokyo.timestamp()) * 10**9 + tokyo.microsecond * 1000 + 789
        assert utc_timestamp(tokyo_ns) == "2026-11-30T07:51:00.123456Z"
        now = datetime.fromisoformat(utc_timestamp())
        assert now.utcoffset() == timedelta(0)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_structlog_runs_the_shared_processors_into_one_json_object():
    structlog.configure(
        processors=[*LOG_PROCESSORS, json_line], logger_factory=structlog.ReturnLoggerFactory()
    )
    try:
        rendered = structlog.get_logger().bind(watcher="web").warning("late", pid=12)
    finally:
        structlog.reset_defaults()
    line = json.loads(rendered)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["level"] == "warning" and line["event"] == "late"
    assert line["watcher"] == "web" and line["pid"] == 12
    assert line["timestamp"].endswith("Z")


def test_a_fatal_line_is_the_old_line_for_people_and_an_event_in_json():
    assert fatal_line("chapiteau", "console", "bad") == "chapiteau: bad"
    event = json.loads(fatal_line("chapiteau-supervisor", "json", "'four' is not an integer"))
    assert event["level"] == "critical" and event["event"] == "fatal_error"
    assert event["logger"] == "chapiteau-supervisor"
    assert event["error"] == "'four' is not an integer"
    assert event["timestamp"].endswith("Z")


@pytest.mark.parametrize("line", ['{"event": "x"}', '{"a": [1, {"b": 2}]}'])
def test_a_relayed_json_object_is_kept_as_it_is(line):
    assert as_json_event(line, "supervisor_output") == line


@pytest.mark.parametrize(
    "line",
    ["Traceback (most recent call last):", "{not json", "[1, 2]", '{"a": ' + "[" * 100000, ""],
)
def test_any_other_relayed_line_becomes_an_event_carrying_it(line):
    event = json.loads(as_json_event(line, "supervisor_output", stream="stderr"))
    assert event["event"] == "supervisor_output" and event["stream"] == "stderr"
    assert event["line"] == line and event["timestamp"].endswith("Z")


def test_log_exception_puts_the_traceback_in_one_json_field():
    structlog.configure(
        processors=[*LOG_PROCESSORS, json_line], logger_factory=structlog.ReturnLoggerFactory()
    )
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            rendered = structlog.get_logger().exception("peer_handling_failed")
    finally:
        structlog.reset_defaults()
    line = json.loads(rendered)
    assert line["level"] == "error" and "exc_info" not in line
    assert "ValueError: boom" in line["exception"]
