"""Tests for chapiteau.protocol.broker_messages: round trips, limits, and malformed input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chapiteau.protocol.broker_messages import (
    ERROR_CODES,
    FAMILIES,
    HEADER,
    MAX_FDS_PER_MESSAGE,
    MAX_FRAME_BYTES,
    MAX_ID,
    MAX_NAME_BYTES,
    MAX_NAMES_PER_REQUEST,
    MAX_REASON_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SOCKET_TYPES,
    BindReuseport,
    Error,
    GetSockets,
    GetSteering,
    Handover,
    Held,
    Hello,
    HoldMemfd,
    HoldPipes,
    ListSockets,
    Message,
    Ok,
    ProtocolError,
    Ready,
    Release,
    ReloadConfig,
    ReloadDone,
    Reloaded,
    Shutdown,
    SocketInfo,
    SocketList,
    Sockets,
    SteeringMaps,
    TakeHeld,
    Welcome,
    decode,
    encode,
    fd_count,
)

names = st.from_regex(rf"[A-Za-z0-9_.\-]{{1,{MAX_NAME_BYTES}}}", fullmatch=True)
short_text = st.text(max_size=64)
socket_infos = st.builds(
    SocketInfo,
    name=names,
    family=st.sampled_from(FAMILIES),
    type=st.sampled_from(SOCKET_TYPES),
    host=st.none() | short_text,
    port=st.none() | st.integers(0, 65535),
    path=st.none() | short_text,
    backlog=st.integers(0, 2**31 - 1),
    blocking=st.booleans(),
    reuseport=st.booleans(),
    inode=st.integers(0, 2**64 - 1),
)
name_tuples = st.lists(names, max_size=5).map(tuple)
strategies_by_type: dict[type, st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, st.lists(st.integers(0, 2**31 - 1), max_size=16).map(tuple)),
    Welcome: st.builds(Welcome, st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1)),
    ListSockets: st.just(ListSockets()),
    SocketList: st.builds(SocketList, st.lists(socket_infos, max_size=4).map(tuple)),
    GetSockets: st.builds(GetSockets, name_tuples),
    BindReuseport: st.builds(BindReuseport, names),
    GetSteering: st.builds(GetSteering, names),
    SteeringMaps: st.builds(SteeringMaps, names),
    Sockets: st.builds(Sockets, st.lists(socket_infos, max_size=4).map(tuple)),
    ReloadConfig: st.just(ReloadConfig()),
    Reloaded: st.builds(Reloaded, name_tuples, name_tuples, name_tuples),
    Shutdown: st.just(Shutdown()),
    Ready: st.just(Ready()),
    ReloadDone: st.builds(ReloadDone, st.booleans()),
    HoldPipes: st.builds(HoldPipes, name_tuples),
    HoldMemfd: st.builds(HoldMemfd, names),
    Release: st.builds(Release, name_tuples),
    TakeHeld: st.builds(TakeHeld, st.just("") | names),
    Held: st.builds(
        Held,
        st.lists(st.tuples(names, st.integers(1, 2)), max_size=5).map(tuple),
        st.booleans(),
    ),
    Handover: st.just(Handover()),
    Ok: st.just(Ok()),
    Error: st.builds(Error, st.sampled_from(ERROR_CODES), st.text(max_size=MAX_REASON_BYTES)),
}
messages: st.SearchStrategy[Message] = st.one_of(*strategies_by_type.values())
request_ids = st.integers(0, MAX_ID)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | short_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
    max_leaves=12,
)


def frame_of(payload: bytes) -> bytes:
    """A frame with a correct header around an arbitrary payload."""
    return HEADER.pack(len(payload)) + payload


def frame_json(obj: Any) -> bytes:
    return frame_of(json.dumps(obj).encode())


def error_code(frame: bytes, nfds: int = 0) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode(frame, nfds)
    return caught.value.code


def a_socket(name: str = "web") -> dict[str, Any]:
    return SocketInfo(name, "AF_INET", "SOCK_STREAM", "127.0.0.1", 80).to_json()


# -- round trips --------------------------------------------------------------


@given(messages, request_ids)
def test_every_message_round_trips(message: Message, request_id: int) -> None:
    assert decode(encode(message, request_id), fd_count(message)) == (request_id, message)


def test_strategies_cover_every_message_type() -> None:
    assert set(strategies_by_type) == set(MESSAGE_TYPES.values())


@given(messages, request_ids)
def test_frame_header_is_the_big_endian_payload_length(message: Message, request_id: int) -> None:
    frame = encode(message, request_id)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4


@given(messages, request_ids)
def test_payload_is_an_ascii_json_object_with_type_and_id(
    message: Message, request_id: int
) -> None:
    body = json.loads(encode(message, request_id)[4:].decode("ascii"))
    assert (body["type"], body["id"]) == (message.TYPE, request_id)


def test_only_sockets_held_and_steering_carry_fds() -> None:
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM")
    assert fd_count(Sockets((info, info))) == 2
    assert fd_count(SocketList((info, info))) == 0
    assert fd_count(SteeringMaps("web")) == 2
    assert fd_count(GetSteering("web")) == 0


def test_hello_offers_the_current_version_by_default() -> None:
    assert Hello().versions == (PROTOCOL_VERSION,)


# -- limits ---------------------------------------------------------------------


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    payload = b'{"type":"ok","id":1}'
    padded = payload + b" " * (MAX_FRAME_BYTES - HEADER.size - len(payload))
    assert decode(frame_of(padded)) == (1, Ok())


def test_frame_over_the_limit_is_a_bad_frame() -> None:
    payload = b'{"type":"ok","id":1}'
    padded = payload + b" " * (MAX_FRAME_BYTES - HEADER.size - len(payload) + 1)
    assert error_code(frame_of(padded)) == "bad_frame"


def test_encoding_a_frame_over_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(
            SocketList((SocketInfo("web", "AF_UNIX", "SOCK_STREAM", path="x" * MAX_FRAME_BYTES),)),
            1,
        )


def test_sockets_with_the_maximum_fds_round_trip() -> None:
    message = Sockets((SocketInfo("web", "AF_INET", "SOCK_STREAM"),) * MAX_FDS_PER_MESSAGE)
    assert decode(encode(message, 1), MAX_FDS_PER_MESSAGE) == (1, message)


def test_encoding_sockets_over_the_fd_limit_is_refused() -> None:
    message = Sockets((SocketInfo("web", "AF_INET", "SOCK_STREAM"),) * (MAX_FDS_PER_MESSAGE + 1))
    with pytest.raises(ValueError, match="fds"):
        encode(message, 1)


def test_sockets_over_the_fd_limit_is_too_many() -> None:
    frame = frame_json(
        {"type": "sockets", "id": 1, "sockets": [a_socket()] * (MAX_FDS_PER_MESSAGE + 1)}
    )
    assert error_code(frame, MAX_FDS_PER_MESSAGE + 1) == "too_many"


def test_get_sockets_with_the_maximum_names_is_accepted() -> None:
    names = [f"s{i}" for i in range(MAX_NAMES_PER_REQUEST)]
    frame = frame_json({"type": "get_sockets", "id": 1, "names": names})
    assert decode(frame) == (1, GetSockets(tuple(names)))


def test_get_sockets_over_the_names_limit_is_too_many() -> None:
    frame = frame_json(
        {"type": "get_sockets", "id": 1, "names": ["web"] * (MAX_NAMES_PER_REQUEST + 1)}
    )
    assert error_code(frame) == "too_many"


def test_hello_with_more_than_sixteen_versions_is_too_many() -> None:
    assert error_code(frame_json({"type": "hello", "id": 1, "versions": [1] * 17})) == "too_many"


def test_name_of_the_maximum_length_is_accepted() -> None:
    name = "n" * MAX_NAME_BYTES
    assert decode(frame_json({"type": "bind_reuseport", "id": 1, "name": name})) == (
        1,
        BindReuseport(name),
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "n" * (MAX_NAME_BYTES + 1),
        "a b",
        "../etc",
        "a/b",
        "caf\u00e9",
        "web\n",
        "\nweb",
        "we\x00b",
        "web:80",
        7,
        None,
        ["web"],
    ],
)
def test_bad_socket_names_are_bad_messages(name: object) -> None:
    assert (
        error_code(frame_json({"type": "get_sockets", "id": 1, "names": [name]})) == "bad_message"
    )


@pytest.mark.parametrize("request_id", [0, 1, MAX_ID])
def test_ids_in_range_are_accepted(request_id: int) -> None:
    assert decode(frame_json({"type": "ok", "id": request_id})) == (request_id, Ok())


@pytest.mark.parametrize("request_id", [-1, MAX_ID + 1, 2**64, 1.0, "1", None, True, False])
def test_ids_out_of_range_or_not_integers_are_bad_messages(request_id: object) -> None:
    assert error_code(frame_json({"type": "ok", "id": request_id})) == "bad_message"


def test_missing_id_is_a_bad_message() -> None:
    assert error_code(frame_json({"type": "ok"})) == "bad_message"


@pytest.mark.parametrize("request_id", [-1, MAX_ID + 1])
def test_encoding_an_id_out_of_range_is_refused(request_id: int) -> None:
    with pytest.raises(ValueError, match="request id"):
        encode(Ok(), request_id)


def test_error_reason_over_the_limit_is_a_bad_message() -> None:
    frame = frame_json(
        {"type": "error", "id": 1, "code": "bad_frame", "reason": "x" * (MAX_REASON_BYTES + 1)}
    )
    assert error_code(frame) == "bad_message"


def test_protocol_error_reason_is_capped_so_it_fits_an_error_reply() -> None:
    exc = ProtocolError("bad_message", "x" * (MAX_FRAME_BYTES * 2))
    assert len(exc.reason) <= MAX_REASON_BYTES


def test_an_error_reply_with_a_long_reason_is_capped_so_the_peer_accepts_it() -> None:
    reply = Error("bind_failed", "x" * (MAX_REASON_BYTES + 1))
    assert decode(encode(reply, 1)) == (1, Error("bind_failed", "x" * MAX_REASON_BYTES))


def test_unknown_type_with_a_huge_name_gives_a_bounded_reason() -> None:
    frame = frame_json({"type": "x" * (MAX_FRAME_BYTES // 2), "id": 1})
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert len(caught.value.reason) <= MAX_REASON_BYTES


# -- malformed input ------------------------------------------------------------


@pytest.mark.parametrize("frame", [b"", b"\x00", b"\x00\x00\x00"])
def test_frame_shorter_than_its_header_is_a_bad_frame(frame: bytes) -> None:
    assert error_code(frame) == "bad_frame"


@pytest.mark.parametrize("delta", [-1, 1, 1000, -20])
def test_header_length_not_matching_the_payload_is_a_bad_frame(delta: int) -> None:
    payload = b'{"type":"ok","id":1}'
    assert error_code(HEADER.pack(len(payload) + delta) + payload) == "bad_frame"


@pytest.mark.parametrize("payload", [b"\xff\xfe{}", b'{"type":"ok","id":1,"x":"\xc3"}'])
def test_payload_not_utf8_is_a_bad_frame(payload: bytes) -> None:
    assert error_code(frame_of(payload)) == "bad_frame"


@pytest.mark.parametrize("payload", [b"", b"{", b"{'type': 'ok'}", b"ok", b'{"type":"ok","id":1}x'])
def test_payload_not_json_is_a_bad_frame(payload: bytes) -> None:
    assert error_code(frame_of(payload)) == "bad_frame"


def test_deeply_nested_json_is_a_bad_frame() -> None:
    assert error_code(frame_of(b"[" * 100_000)) == "bad_frame"


def test_integer_too_long_to_parse_is_a_bad_frame() -> None:
    assert error_code(frame_of(b'{"type":"ok","id":' + b"1" * 5000 + b"}")) == "bad_frame"


@pytest.mark.parametrize("body", [[], ["type", "ok"], "ok", 1, None, True])
def test_json_that_is_not_an_object_is_a_bad_message(body: object) -> None:
    assert error_code(frame_json(body)) == "bad_message"


@pytest.mark.parametrize("kind", ["nope", "Hello", "", None, 1, ["hello"], {"hello": 1}])
def test_unknown_or_invalid_type_is_a_bad_message(kind: object) -> None:
    assert error_code(frame_json({"type": kind, "id": 1})) == "bad_message"


def test_missing_type_is_a_bad_message() -> None:
    assert error_code(frame_json({"id": 1})) == "bad_message"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "hello", "id": 1},
        {"type": "welcome", "id": 1, "version": 1},
        {"type": "welcome", "id": 1, "broker_pid": 1},
        {"type": "get_sockets", "id": 1},
        {"type": "bind_reuseport", "id": 1},
        {"type": "get_steering", "id": 1},
        {"type": "steering", "id": 1},
        {"type": "socket_list", "id": 1},
        {"type": "reloaded", "id": 1, "added": [], "removed": []},
        {"type": "error", "id": 1},
        {"type": "sockets", "id": 1, "sockets": [{"name": "web", "type": "SOCK_STREAM"}]},
    ],
)
def test_missing_fields_are_bad_messages(body: dict[str, Any]) -> None:
    assert error_code(frame_json(body)) == "bad_message"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "ok", "id": 1, "extra": 1},
        {"type": "list_sockets", "id": 1, "names": []},
        {"type": "hello", "id": 1, "versions": [1], "user": "root"},
        {"type": "get_sockets", "id": 1, "names": [], "host": "0.0.0.0"},
        {"type": "bind_reuseport", "id": 1, "name": "web", "port": 80},
        {"type": "get_steering", "id": 1, "name": "web", "slots": 4096},
        {"type": "steering", "id": 1, "name": "web", "fds": [3, 4]},
        {"type": "sockets", "id": 1, "sockets": [{**a_socket(), "fd": 3}]},
    ],
)
def test_extra_fields_are_bad_messages(body: dict[str, Any]) -> None:
    assert error_code(frame_json(body)) == "bad_message"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "hello", "id": 1, "versions": 1},
        {"type": "hello", "id": 1, "versions": ["1"]},
        {"type": "hello", "id": 1, "versions": [-1]},
        {"type": "welcome", "id": 1, "version": "1", "broker_pid": 1},
        {"type": "welcome", "id": 1, "version": 1, "broker_pid": 0},
        {"type": "get_sockets", "id": 1, "names": "web"},
        {"type": "get_sockets", "id": 1, "names": {"web": 1}},
        {"type": "socket_list", "id": 1, "sockets": ["web"]},
        {"type": "socket_list", "id": 1, "sockets": {}},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "family": "AF_PACKET"}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "type": "stream"}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "port": 65536}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "port": "80"}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "host": 127}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "path": "x" * 4097}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "blocking": 1}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "reuseport": "no"}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "inode": -1}]},
        {"type": "reloaded", "id": 1, "added": "web", "removed": [], "changed": []},
        {"type": "get_steering", "id": 1, "name": ["web"]},
        {"type": "get_steering", "id": 1, "name": "../web"},
        {"type": "steering", "id": 1, "name": 7},
        {"type": "error", "id": 1, "code": "oops"},
        {"type": "error", "id": 1, "code": "bad_frame", "reason": 3},
    ],
)
def test_wrong_field_types_are_bad_messages(body: dict[str, Any]) -> None:
    assert error_code(frame_json(body)) == "bad_message"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "hello", "id": 1, "versions": [True]},
        {"type": "welcome", "id": 1, "version": True, "broker_pid": 1},
        {"type": "welcome", "id": 1, "version": 1, "broker_pid": True},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "port": True}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "backlog": False}]},
        {"type": "socket_list", "id": 1, "sockets": [{**a_socket(), "inode": True}]},
    ],
)
def test_bool_where_an_integer_is_expected_is_a_bad_message(body: dict[str, Any]) -> None:
    assert error_code(frame_json(body)) == "bad_message"


@pytest.mark.parametrize(
    "message",
    [
        Hello(),
        ListSockets(),
        GetSockets(("web",)),
        GetSteering("web"),
        Ok(),
        Error("bad_frame"),
        Shutdown(),
    ],
)
def test_fds_on_a_message_that_carries_none_are_unexpected(message: Message) -> None:
    assert error_code(encode(message, 1), 1) == "unexpected_fds"


@pytest.mark.parametrize("nfds", [0, 1, 3])
def test_sockets_with_the_wrong_fd_count_is_unexpected_fds(nfds: int) -> None:
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM")
    assert error_code(encode(Sockets((info, info)), 1), nfds) == "unexpected_fds"


@pytest.mark.parametrize("nfds", [0, 1, 3])
def test_a_steering_reply_without_exactly_its_two_maps_is_unexpected_fds(nfds: int) -> None:
    assert error_code(encode(SteeringMaps("web"), 1), nfds) == "unexpected_fds"


def test_a_steering_reply_carries_the_count_map_and_the_slots_map() -> None:
    assert decode(frame_json({"type": "steering", "id": 4, "name": "web"}), 2) == (
        4,
        SteeringMaps("web"),
    )


def test_no_steering_is_an_error_code() -> None:
    assert decode(frame_json({"type": "error", "id": 1, "code": "no_steering"})) == (
        1,
        Error("no_steering"),
    )


# -- anything at all ------------------------------------------------------------


@given(st.binary(max_size=512), st.integers(0, MAX_FDS_PER_MESSAGE))
def test_random_bytes_raise_only_protocol_errors(frame: bytes, nfds: int) -> None:
    try:
        decode(frame, nfds)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@given(st.binary(max_size=512), st.integers(0, 3))
def test_random_payloads_behind_a_valid_header_raise_only_protocol_errors(
    payload: bytes, nfds: int
) -> None:
    try:
        decode(frame_of(payload), nfds)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    request_ids | json_values,
    st.dictionaries(
        st.sampled_from(["versions", "names", "name", "sockets", "code"]) | short_text,
        json_values,
        max_size=4,
    ),
    st.integers(0, 3),
)
def test_random_json_objects_raise_only_protocol_errors(
    kind: str, request_id: object, fields: dict[str, Any], nfds: int
) -> None:
    try:
        decode(frame_json({**fields, "type": kind, "id": request_id}), nfds)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@given(st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode()))
def test_every_protocol_error_fits_in_an_error_reply(payload: bytes) -> None:
    try:
        decode(frame_of(payload))
    except ProtocolError as exc:
        reply = Error(exc.code, exc.reason)
        assert decode(encode(reply, 0)) == (0, reply)


def test_a_held_reply_carries_the_fds_its_entries_announce() -> None:
    held = Held((("out.1", 2), ("state.0", 1)))
    assert fd_count(held) == 3
    assert error_code(encode(held, 1), 1) == "unexpected_fds"


def test_a_held_entry_carries_one_or_two_fds() -> None:
    frame = frame_json({"type": "held", "id": 1, "entries": [["a", 3]]})
    assert error_code(frame, 3) == "bad_message"


EXAMPLE_FRAME = re.compile(r"^[→←] ((?:[0-9a-f]{2} ){4}) (\{.*\})$", re.M)


def test_the_example_session_of_the_spec_is_what_encode_writes_byte_for_byte():
    spec = (Path(__file__).parent.parent / "docs" / "broker-protocol.md").read_text()
    examples = EXAMPLE_FRAME.findall(spec)
    assert len(examples) == 9
    for header, payload in examples:
        frame = bytes.fromhex(header) + payload.encode()
        request_id, message = decode(frame, 1 if '"type":"sockets"' in payload else 0)
        assert encode(message, request_id) == frame
