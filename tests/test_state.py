"""Tests for chapiteau.supervisor.state: the snapshot one supervisor generation leaves."""

from __future__ import annotations

from chapiteau.supervisor.state import (
    ProcessRecord,
    Snapshot,
    WatcherRecord,
    decode,
    encode,
    encode_process,
    newest,
)

PROCESS = ProcessRecord(1234, 2, 1700000000.5, 987654, "out.1.7", None)
WATCHER = WatcherRecord(
    name="web",
    phase="active",
    overrides={"numprocesses": 3, "env": {"A": "b"}},
    stop_signal=2,
    graceful_timeout=5.0,
    spawns={2: 4},
    restarts=3,
)


def test_a_snapshot_round_trips() -> None:
    data = encode(7, [(WATCHER, [encode_process(PROCESS)])])
    expected = WatcherRecord(**{**vars(WATCHER), "processes": (PROCESS,)})
    assert decode(data) == Snapshot(7, (expected,))


def test_a_snapshot_keeps_the_notify_sockets_address() -> None:
    address = "@chapiteau-notify/4321/00ff00ff00ff00ff"
    assert decode(encode(7, [(WATCHER, [])], address)) == Snapshot(7, (WATCHER,), address)
    assert decode(encode(7, [(WATCHER, [])])) == Snapshot(7, (WATCHER,), None)


def test_only_an_abstract_name_is_taken_as_the_notify_sockets_address() -> None:
    for value in (b'"/run/notify"', b'"@"', b"3", b'["@x"]'):
        data = b'{"version":1,"serial":1,"notify_socket":%s,"watchers":[]}' % value
        assert decode(data) == Snapshot(1)
    assert decode(b'{"version":1,"serial":1,"watchers":[]}') == Snapshot(1)


def test_a_snapshot_cut_short_is_no_snapshot() -> None:
    data = encode(7, [(WATCHER, [encode_process(PROCESS)])])
    assert all(decode(data[:cut]) is None for cut in range(len(data)))


def test_anything_else_is_no_snapshot() -> None:
    for data in (b"", b"\0" * 10, b"[]", b'{"version": 2, "serial": 1, "watchers": []}',
                 b'{"version": 1, "serial": 1, "watchers": [{"name": "web"}]}'):  # fmt: skip
        assert decode(data) is None


def test_the_newest_whole_snapshot_wins() -> None:
    older = encode(4, [(WATCHER, [])])
    newer = encode(5, [(WATCHER, [encode_process(PROCESS)])])
    assert newest([older, newer]).serial == 5
    assert newest([newer[:-3], older]).serial == 4  # killed while writing the newer one
    assert newest([b"", b""]) is None
