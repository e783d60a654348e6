"""Tests for reloadconfig in chapiteau.supervisor.arbiter: a failed reload changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.arbiter import Arbiter
from chapiteau.supervisor.broker_client import BrokerError
from chapiteau.supervisor.config import WatcherConfig, load_config
from chapiteau.supervisor.socket_pool import SocketPool

FLAPPING = "[plugin:flapping]\nuse = circus.plugins.flapping.Flapping\n"


class BuiltWatcher:
    """Stands for a Watcher that reloadconfig built: only its streams matter here."""

    def __init__(self, config: WatcherConfig) -> None:
        self.name = config.name
        self.streams_closed = False

    def close_streams(self) -> None:
        self.streams_closed = True


class RefusingBroker:
    def reload_config(self) -> None:
        raise BrokerError("the broker refused: bad [socket:web]")


def arbiter_of(path: Path, text: str, broker: object = None) -> Arbiter:
    path.write_text(text, encoding="utf-8")
    return Arbiter(load_config(path), broker, SocketPool(None, {}))  # type: ignore[arg-type]


def test_bad_flapping_value_leaves_the_running_configuration(tmp_path: Path) -> None:
    path = tmp_path / "circus.ini"
    arbiter = arbiter_of(path, FLAPPING + "window = 2\n")
    running = arbiter.config
    path.write_text(FLAPPING + "window = soon\n", encoding="utf-8")

    with pytest.raises(ConfigError):
        asyncio.run(arbiter.prepare_reload())

    assert arbiter.config is running
    assert not arbiter._reload_lock.locked()


def test_broker_error_closes_the_streams_of_the_watchers_built(tmp_path: Path) -> None:
    path = tmp_path / "circus.ini"
    arbiter = arbiter_of(path, "", broker=RefusingBroker())
    built: list[BuiltWatcher] = []

    def build(config: WatcherConfig) -> BuiltWatcher:
        built.append(BuiltWatcher(config))
        return built[-1]

    arbiter.watcher = build  # type: ignore[assignment,method-assign]
    path.write_text("[watcher:web]\ncmd = run\n", encoding="utf-8")

    with pytest.raises(BrokerError):
        asyncio.run(arbiter.prepare_reload())

    assert [(w.name, w.streams_closed) for w in built] == [("web", True)]
    assert arbiter.config.watchers == ()
