"""Tests for reloadconfig in chapiteau.supervisor.arbiter: a failed reload changes nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.arbiter import Arbiter
from chapiteau.supervisor.broker_client import BrokerError
from chapiteau.supervisor.config import load_config
from chapiteau.supervisor.socket_pool import SocketPool

FLAPPING = "[plugin:flapping]\nuse = circus.plugins.flapping.Flapping\n"


class RefusingBroker:
    def reload_config(self) -> None:
        raise BrokerError("the broker refused: bad [socket:web]")


def arbiter_of(path: Path, text: str, broker: object = None) -> Arbiter:
    path.write_text(text, encoding="utf-8")
    return Arbiter(load_config(path), broker, SocketPool(None, {}))  # type: ignore[arg-type]


def open_files(path: Path) -> list[str]:
    """The fds of this process open on ``path``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except FileNotFoundError:
            pass
    return found


def test_bad_flapping_value_leaves_the_running_configuration(tmp_path: Path) -> None:
    path = tmp_path / "circus.ini"
    arbiter = arbiter_of(path, FLAPPING + "window = 2\n")
    running = arbiter.config

    async def test() -> None:
        arbiter.attach(asyncio.get_running_loop())
        try:
            path.write_text(FLAPPING + "window = soon\n", encoding="utf-8")
            with pytest.raises(ConfigError):
                await arbiter.reload_config()
            assert arbiter.config is running

            # The failed reload let go of its turn: the next one runs.
            path.write_text(FLAPPING + "window = 3\n", encoding="utf-8")
            async with asyncio.timeout(10):
                await arbiter.reload_config()
            assert arbiter.config.flapping.window == 3
        finally:
            arbiter.detach()

    asyncio.run(test())


def test_broker_error_closes_the_streams_of_the_watchers_built(tmp_path: Path) -> None:
    path = tmp_path / "circus.ini"
    output = tmp_path / "web.log"
    arbiter = arbiter_of(path, "", broker=RefusingBroker())

    async def test() -> None:
        arbiter.attach(asyncio.get_running_loop())
        try:
            path.write_text(
                "[watcher:web]\ncmd = run\nstdout_stream.class = FileStream\n"
                f"stdout_stream.filename = {output}\n",
                encoding="utf-8",
            )
            with pytest.raises(BrokerError):
                await arbiter.reload_config()
        finally:
            arbiter.detach()

    asyncio.run(test())

    assert output.exists()
    assert open_files(output) == []
    assert arbiter.config.watchers == ()
    assert arbiter.watchers == {}
