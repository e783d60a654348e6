"""Tests for chapiteau.supervisor.commands.dispatch: a control request in, Circus's reply out."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from chapiteau.protocol.circus_messages import MESSAGE_ERROR, UNKNOWN_COMMAND, Request
from chapiteau.supervisor.commands import dispatch

ARBITER: Any = SimpleNamespace(
    watchers={"web": SimpleNamespace(name="web", state="active", processes={11: None, 12: None})},
    requests=Counter(),
    handover=None,
)
"""What the read-only commands need of an arbiter: its watchers by name, and where the
requests are counted (connect mode: no handover)."""


def reply(command: str, properties: dict[str, Any] | None = None, cast: bool = False) -> Any:
    request = Request("id-1", command, properties or {}, cast)
    return asyncio.run(dispatch(ARBITER, request, b"raw"))


def test_a_command_answers_with_its_fields_and_the_request_id():
    answer = reply("list", {"name": "web"})
    assert (answer["status"], answer["pids"], answer["id"]) == ("ok", [11, 12], "id-1")


def test_an_unknown_command_is_errno_2():
    answer = reply("dance")
    assert (answer["status"], answer["errno"]) == ("error", UNKNOWN_COMMAND)
    assert answer["reason"] == "unknown command: 'dance'"


def test_requests_are_counted_by_command_and_status_made_up_names_as_unknown():
    ARBITER.requests.clear()
    reply("list", {"name": "web"})
    reply("list", {"name": "web"}, cast=True)
    reply("list", {"name": "nope"})
    reply("dance")
    reply("tango")
    assert ARBITER.requests == {
        ("list", "ok"): 2,
        ("list", "error"): 1,
        ("unknown", "error"): 2,
    }


def test_a_missing_required_property_is_errno_3_with_circus_words():
    answer = reply("incr")
    assert (answer["errno"], answer["reason"]) == (
        MESSAGE_ERROR,
        "message invalid 'name' is missing",
    )


def test_an_unknown_watcher_is_errno_3():
    answer = reply("status", {"name": "nope"})
    assert (answer["errno"], answer["reason"]) == (MESSAGE_ERROR, "program nope not found")


def test_a_cast_gets_no_reply():
    assert reply("list", cast=True) is None


def test_a_reply_goes_out_once_the_snapshot_holds_what_the_command_changed():
    # The next supervisor (after a kill -9 right after the reply) must know of the change.
    flushed: list[str] = []
    handover = SimpleNamespace(flush=lambda: flushed.append("flush"))
    arbiter = SimpleNamespace(**{**vars(ARBITER), "handover": handover, "requests": Counter()})
    request = Request("id-1", "list", {}, False)
    assert asyncio.run(dispatch(arbiter, request, b"raw"))["status"] == "ok"
    assert flushed == ["flush"]
