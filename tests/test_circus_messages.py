"""The Circus control messages: parsing never raises, replies have Circus's shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chapiteau.protocol.circus_messages import (
    INVALID_JSON,
    MESSAGE_ERROR,
    Request,
    decode_reply,
    encode,
    error,
    make_request,
    ok,
    parse_request,
)

NOW = 1_700_000_000.5


def test_a_dealer_request_parses_with_a_lower_cased_command():
    request = parse_request(b'{"id": "abc", "command": "LIST", "properties": {"name": "web"}}', NOW)
    assert request == Request(id="abc", command="list", properties={"name": "web"}, cast=False)


def test_missing_properties_and_id_default_to_empty_and_none():
    assert parse_request(b'{"command": "list"}', NOW) == Request(None, "list", {}, False)


def test_msg_type_cast_marks_a_request_that_gets_no_reply():
    request = parse_request(b'{"command": "incr", "msg_type": "cast", "properties": {}}', NOW)
    assert isinstance(request, Request) and request.cast


def test_waiting_is_read_inside_properties_only():
    inside = parse_request(b'{"command": "stop", "properties": {"waiting": true}}', NOW)
    top_level = parse_request(b'{"command": "stop", "waiting": true}', NOW)
    assert isinstance(inside, Request) and inside.waiting
    assert isinstance(top_level, Request) and not top_level.waiting


def test_an_object_id_is_kept_verbatim():
    request = parse_request(b'{"id": {"a": [1]}, "command": "list"}', NOW)
    assert isinstance(request, Request) and request.id == {"a": [1]}


def test_invalid_json_is_errno_1_json_invalid_with_a_null_id():
    reply = parse_request(b"{not json", NOW)
    assert isinstance(reply, dict)
    assert (reply["errno"], reply["reason"], reply["id"]) == (INVALID_JSON, "json invalid", None)


def test_an_empty_body_is_an_error_reply_not_an_exception():
    for body in (b"", b"   \n"):
        reply = parse_request(body, NOW)
        assert isinstance(reply, dict) and reply["errno"] == INVALID_JSON


def test_json_that_is_not_an_object_is_a_message_error():
    reply = parse_request(b'["list"]', NOW)
    assert isinstance(reply, dict) and reply["errno"] == MESSAGE_ERROR


def test_a_missing_command_is_a_message_error_that_echoes_the_id():
    reply = parse_request(b'{"id": 7, "properties": {}}', NOW)
    assert isinstance(reply, dict)
    assert reply["errno"] == MESSAGE_ERROR and reply["id"] == 7
    assert "'command' is missing" in reply["reason"]


def test_a_command_that_is_not_a_string_is_a_message_error():
    reply = parse_request(b'{"command": 12}', NOW)
    assert isinstance(reply, dict) and reply["errno"] == MESSAGE_ERROR


def test_properties_that_are_not_an_object_are_a_message_error():
    reply = parse_request(b'{"command": "list", "properties": [1, 2]}', NOW)
    assert isinstance(reply, dict) and reply["errno"] == MESSAGE_ERROR


def test_deeply_nested_json_is_an_error_reply():
    reply = parse_request(b"[" * 100_000 + b"]" * 100_000, NOW)
    assert isinstance(reply, dict) and reply["status"] == "error"


def test_invalid_utf8_is_json_invalid():
    reply = parse_request(b'{"command": "\xff\xfe"}', NOW)
    assert isinstance(reply, dict) and reply["errno"] == INVALID_JSON


@given(st.binary(max_size=512))
def test_random_bytes_give_a_request_or_an_encodable_error(body):
    parsed = parse_request(body, NOW)
    if isinstance(parsed, dict):
        assert parsed["status"] == "error"
        assert decode_reply(encode(parsed))["errno"] == parsed["errno"]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_any_json_value_gives_a_request_or_an_error_reply(value):
    parsed = parse_request(json.dumps(value).encode(), NOW)
    assert isinstance(parsed, Request) or parsed["status"] == "error"


def test_ok_keys_come_in_circus_order():
    reply = ok({"watchers": ["a"]}, "x", now=NOW)
    assert list(reply) == ["status", "time", "watchers", "id"]
    assert reply["status"] == "ok" and isinstance(reply["time"], float)


def test_a_status_field_replaces_ok_in_place():
    reply = ok({"status": "active"}, 1, now=NOW)
    assert list(reply) == ["status", "time", "id"] and reply["status"] == "active"


def test_error_keys_come_in_circus_order():
    reply = error("program x not found", MESSAGE_ERROR, "id1", now=NOW)
    assert list(reply) == ["status", "reason", "tb", "time", "errno", "id"]
    assert reply["tb"] is None


def test_replies_are_encoded_with_default_separators_and_ascii():
    assert encode({"status": "ok", "name": "é"}) == b'{"status": "ok", "name": "\\u00e9"}'


def test_make_request_round_trips_through_parse_request():
    message = make_request("stop", {"name": "web", "waiting": True}, "id9", cast=True)
    request = parse_request(json.dumps(message).encode(), NOW)
    assert request == Request("id9", "stop", {"name": "web", "waiting": True}, cast=True)


def test_decode_reply_refuses_a_non_object():
    with pytest.raises(ValueError, match="must be a JSON object"):
        decode_reply(b"[]")


def test_a_reply_carries_the_time_its_caller_gives():
    assert ok({}, 1, now=NOW)["time"] == NOW
    assert error("x", MESSAGE_ERROR, 1, now=NOW)["time"] == NOW
    assert parse_request(b"{not json", NOW)["time"] == NOW
