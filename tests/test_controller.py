"""Tests for chapiteau.supervisor.endpoints.controller: the control ROUTER, on a real ipc socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from chapiteau.protocol.circus_messages import INVALID_JSON, Request, encode, make_request
from chapiteau.supervisor.endpoints.controller import EAGER_START, Controller

TIMEOUT = 10.0


async def echo(request: Request, raw: bytes) -> dict[str, Any] | None:
    """A handler that answers with what it was asked, and nothing to a cast."""
    if request.cast:
        return None
    return {"status": "ok", "command": request.command, "id": request.id}


def exchange(
    tmp_path: Path,
    talk: Callable[[zmq.asyncio.Context, str], Awaitable[Any]],
    handler: Callable[[Request, bytes], Awaitable[dict[str, Any] | None]] = echo,
) -> Any:
    """Run a Controller on an ipc endpoint under ``tmp_path`` while ``talk`` uses it."""

    async def main() -> Any:
        endpoint = f"ipc://{tmp_path}/control/ctl.sock"
        controller = Controller(endpoint, handler)
        controller.start()
        clients = zmq.asyncio.Context()
        try:
            return await asyncio.wait_for(talk(clients, endpoint), TIMEOUT)
        finally:
            clients.destroy(linger=0)
            await controller.close()

    return asyncio.run(main())


def test_a_dealer_request_gets_the_handlers_reply(tmp_path: Path) -> None:
    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("LIST", {}, "id-1")))
        return json.loads(await dealer.recv())

    assert exchange(tmp_path, talk) == {"status": "ok", "command": "list", "id": "id-1"}


def test_a_req_client_is_answered_too(tmp_path: Path) -> None:
    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        req = context.socket(zmq.REQ)
        req.connect(endpoint)
        await req.send(encode(make_request("status", {"name": "web"}, 7)))
        return json.loads(await req.recv())

    assert exchange(tmp_path, talk) == {"status": "ok", "command": "status", "id": 7}


def test_a_malformed_frame_is_answered_without_reaching_the_handler(tmp_path: Path) -> None:
    asked: list[Request] = []

    async def recording(request: Request, raw: bytes) -> dict[str, Any] | None:
        asked.append(request)
        return await echo(request, raw)

    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(b"{not json")
        return json.loads(await dealer.recv())

    reply = exchange(tmp_path, talk, recording)
    assert (reply["status"], reply["errno"]) == ("error", INVALID_JSON)
    assert asked == []


def test_a_cast_gets_no_reply_and_the_next_request_still_does(tmp_path: Path) -> None:
    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("incr", {}, "cast", cast=True)))
        await dealer.send(encode(make_request("list", {}, "after")))
        return json.loads(await dealer.recv())

    assert exchange(tmp_path, talk)["id"] == "after"


def test_the_ipc_directory_is_created_private(tmp_path: Path) -> None:
    async def talk(context: zmq.asyncio.Context, endpoint: str) -> int:
        return stat.S_IMODE(os.stat(tmp_path / "control").st_mode)

    assert exchange(tmp_path, talk) == 0o700


def test_a_command_that_never_waits_is_answered_in_the_reader_callback(tmp_path: Path) -> None:
    """No further turn of the loop per request (and on Python 3.11 no task: 3.12 has eager
    tasks): what keeps a round trip cheap."""
    tasks: list[asyncio.Task[Any] | None] = []

    async def recording(request: Request, raw: bytes) -> dict[str, Any] | None:
        tasks.append(asyncio.current_task())
        return await echo(request, raw)

    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("list", {}, "now")))
        return json.loads(await dealer.recv())

    assert exchange(tmp_path, talk, recording)["id"] == "now"
    assert [task is None for task in tasks] == [not EAGER_START]


def test_a_command_may_enter_a_timeout_before_it_first_waits(tmp_path: Path) -> None:
    """From Python 3.12 on, ``wait_for`` enters ``asyncio.timeout()``, which needs the
    current task: the first step of a command runs inside its own task there."""

    async def timed(request: Request, raw: bytes) -> dict[str, Any] | None:
        await asyncio.wait_for(asyncio.sleep(0), TIMEOUT)
        return await echo(request, raw)

    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("upgrade", {}, "timed")))
        return json.loads(await asyncio.wait_for(dealer.recv(), TIMEOUT))

    assert exchange(tmp_path, talk, timed)["id"] == "timed"


def test_a_command_that_waits_holds_up_neither_the_socket_nor_the_next_request(
    tmp_path: Path,
) -> None:
    async def slow_stop(request: Request, raw: bytes) -> dict[str, Any] | None:
        if request.command == "stop":
            await asyncio.sleep(0.2)
        return await echo(request, raw)

    async def talk(context: zmq.asyncio.Context, endpoint: str) -> list[str]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("stop", {}, "slow")))
        await dealer.send(encode(make_request("list", {}, "fast")))
        return [json.loads(await dealer.recv())["id"] for _ in range(2)]

    assert exchange(tmp_path, talk, slow_stop) == ["fast", "slow"]


def test_a_cancelled_command_is_cancelled_where_it_waits(tmp_path: Path) -> None:
    """A command carried on by a task gets the task's cancellation (the supervisor's exit)."""
    cancelled = asyncio.Event()

    async def stuck(request: Request, raw: bytes) -> dict[str, Any] | None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    async def main() -> bool:
        controller = Controller(f"ipc://{tmp_path}/control/ctl.sock", stuck)
        controller.start()
        clients = zmq.asyncio.Context()
        try:
            dealer = clients.socket(zmq.DEALER)
            dealer.connect(controller.endpoint)
            await dealer.send(encode(make_request("stop", {}, 1)))
            while not controller.answering:
                await asyncio.sleep(0.01)
            for task in controller.answering:
                task.cancel()
            await asyncio.wait_for(cancelled.wait(), TIMEOUT)
            return cancelled.is_set()
        finally:
            clients.destroy(linger=0)
            await controller.close()

    assert asyncio.run(main())


def test_a_handler_that_crashes_costs_one_request_not_the_socket(tmp_path: Path) -> None:
    async def fragile(request: Request, raw: bytes) -> dict[str, Any] | None:
        if request.command == "crash":
            raise RuntimeError("a bug")
        return await echo(request, raw)

    async def talk(context: zmq.asyncio.Context, endpoint: str) -> dict[str, Any]:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        await dealer.send(encode(make_request("crash", {}, "lost")))
        await dealer.send(encode(make_request("list", {}, "after")))
        return json.loads(await dealer.recv())

    assert exchange(tmp_path, talk, fragile)["id"] == "after"
