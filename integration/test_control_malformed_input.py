"""Whatever arrives on the control endpoint, the next valid request is answered.

Circus stalls for tens of seconds on an empty body, a non-object JSON or a
missing ``command``; chapiteau answers each with an error
(or drops frames it cannot route) and keeps serving. The bounds are generous:
these tests check that a reply comes, not how fast.
"""

from __future__ import annotations

import json
import uuid

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.zmq_clients import REPLY_TIMEOUT, Control

CONFIG = "[watcher:web]\ncmd = /bin/sleep 1000\n"


@pytest.fixture
def control(daemon):
    return daemon(CONFIG).control


def reply_to(control: Control, body: bytes) -> dict:
    control.socket.send(body)
    assert control.socket.poll(int(REPLY_TIMEOUT * 1000)), f"no reply to {body[:60]!r}"
    return json.loads(control.socket.recv())


def assert_still_answers(control: Control) -> None:
    reply = control.call("list")
    assert reply["status"] == "ok" and reply["watchers"] == ["web"]


def test_an_empty_frame_is_answered_with_json_invalid(control):
    reply = reply_to(control, b"")
    assert (reply["status"], reply["errno"], reply["id"]) == ("error", 1, None)
    assert_still_answers(control)


def test_whitespace_is_answered_with_json_invalid(control):
    assert reply_to(control, b"  \n\t")["errno"] == 1
    assert_still_answers(control)


def test_non_json_is_answered_with_json_invalid(control):
    assert reply_to(control, b"list please")["reason"] == "json invalid"
    assert_still_answers(control)


def test_json_that_is_not_an_object_is_answered_with_a_message_error(control):
    for body in (b'["list"]', b'"list"', b"42", b"null"):
        assert reply_to(control, body)["errno"] == 3
    assert_still_answers(control)


def test_a_request_without_command_is_answered_with_its_id(control):
    reply = reply_to(control, b'{"id": "x1", "properties": {}}')
    assert (reply["errno"], reply["id"]) == (3, "x1")
    assert_still_answers(control)


def test_wrong_property_types_are_answered_with_errors(control):
    bodies = [
        {"command": "list", "properties": "web"},
        {"command": 7},
        {"command": "list", "properties": {"name": 12}},
        {"command": "incr", "properties": {"name": "web", "nb": "lots"}},
        {"command": "get", "properties": {"name": "web", "keys": "numprocesses"}},
        {"command": "set", "properties": {"name": "web", "options": []}},
        {"command": "stop", "properties": {"name": "web", "match": "nope"}},
        {"command": "stop", "properties": {"name": "(", "match": "regex"}},
        {"command": "signal", "properties": {"name": "web", "signum": [9]}},
        {"command": "stats", "properties": {"name": "web", "process": {"pid": 1}}},
    ]
    for body in bodies:
        reply = reply_to(control, json.dumps(body).encode())
        assert reply["status"] == "error" and reply["errno"] == 3, (body, reply)
    assert_still_answers(control)


def test_a_req_client_is_answered_despite_its_delimiter_frame(daemon):
    d = daemon(CONFIG)
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.linger = 0
    req.connect(d.endpoint)
    try:
        req.send(json.dumps({"id": "r", "command": "list"}).encode())
        assert req.poll(int(REPLY_TIMEOUT * 1000))
        assert json.loads(req.recv())["watchers"] == ["web"]
    finally:
        req.close()
        context.term()
    assert_still_answers(d.control)


def test_extra_frames_that_are_not_a_request_are_dropped(control):
    control.socket.send_multipart([b"garbage", b"more garbage"])
    assert_still_answers(control)


def test_a_three_frame_message_ending_in_a_request_is_answered(control):
    control.socket.send_multipart([b"", json.dumps({"id": "3f", "command": "list"}).encode()])
    assert control.socket.poll(int(REPLY_TIMEOUT * 1000))
    frames = control.socket.recv_multipart()
    assert json.loads(frames[-1])["id"] == "3f"


def test_a_one_megabyte_message_is_answered(control):
    body = json.dumps({"id": "big", "command": "list", "properties": {"x": "a" * 1_000_000}})
    reply = reply_to(control, body.encode())
    assert reply["id"] == "big" and reply["status"] == "ok"
    assert_still_answers(control)


def test_a_message_above_the_size_limit_costs_only_that_connection(daemon):
    d = daemon(CONFIG)
    d.control.socket.send(b"x" * (5 * 1024 * 1024))
    fresh = Control(d.endpoint)
    try:
        assert_still_answers(fresh)
    finally:
        fresh.close()


def test_many_requests_at_once_are_all_answered(control):
    ids = [control.send("list") for _ in range(200)]
    for request_id in ids:
        assert control.receive(request_id)["status"] == "ok"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_random_frames_never_stop_the_control_socket(control, frames):
    control.socket.send_multipart(frames)
    request_id = uuid.uuid4().hex
    control.socket.send(json.dumps({"id": request_id, "command": "numwatchers"}).encode())
    assert control.receive(request_id)["numwatchers"] == 1
