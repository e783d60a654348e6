"""Tests for chapiteau.supervisor.endpoints.metrics: the HTTP side, against hostile clients.

A real server on loopback, in a real event loop; the arbiter is reduced to what
the collector reads (no watchers). What is served for real watchers is checked
against /proc in integration/test_metrics.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chapiteau.supervisor.endpoints.metrics import MAX_CLIENTS, REQUEST_LIMIT, MetricsServer
from tests.waiting import wait_until_async

ARBITER: Any = SimpleNamespace(
    watchers={}, requests=Counter({("list", "ok"): 2}), supervisor_start=None
)


async def exchange(server: MetricsServer, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection (b"" if it reset it)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # closed with the request unread
        return b""
    finally:
        writer.close()


def with_server(test: Any) -> Any:
    async def run() -> Any:
        server = MetricsServer(ARBITER, "127.0.0.1", 0)
        await server.open()
        try:
            return await test(server)
        finally:
            server.close()

    return asyncio.run(run())


def test_get_metrics_is_the_prometheus_text_format() -> None:
    async def test(server: MetricsServer) -> None:
        reply = await exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        [sample] = families["chapiteau_control_requests"].samples
        assert sample.labels == {"command": "list", "outcome": "ok"} and sample.value == 2
        assert "chapiteau_broker_supervisor_restarts" not in families

    with_server(test)


def test_other_paths_methods_and_garbage_are_refused() -> None:
    async def test(server: MetricsServer) -> None:
        for request, status in (
            (b"GET / HTTP/1.0\r\n\r\n", b"404"),
            (b"DELETE /metrics HTTP/1.0\r\n\r\n", b"405"),
            (b"\x00\xff garbage\r\n\r\n", b"400"),
        ):
            reply = await exchange(server, request)
            assert reply.split(b" ", 2)[1] == status, request

    with_server(test)


def test_an_endless_request_is_dropped_unanswered_and_the_server_still_serves() -> None:
    async def test(server: MetricsServer) -> None:
        flood = b"GET /metrics HTTP/1.0\r\nX: " + b"a" * (REQUEST_LIMIT * 2)
        assert await exchange(server, flood) == b""
        assert b" 200 " in await exchange(server, b"GET /metrics HTTP/1.0\r\n\r\n")

    with_server(test)


def test_clients_beyond_the_limit_are_closed_at_once() -> None:
    async def test(server: MetricsServer) -> None:
        idle = [await asyncio.open_connection(server.host, server.port) for _ in range(MAX_CLIENTS)]
        await wait_until_async(lambda: len(server.clients) == MAX_CLIENTS)
        assert await exchange(server, b"GET /metrics HTTP/1.0\r\n\r\n") == b""
        for _, writer in idle:
            writer.close()

    with_server(test)


def test_between_scrapes_nothing_is_scheduled() -> None:
    """Nothing wakes the supervisor for metrics when nobody scrapes: no timer outlives a
    request (the loop's own queue of timers, read directly)."""

    def armed() -> list[asyncio.TimerHandle]:
        loop: Any = asyncio.get_running_loop()
        return [handle for handle in loop._scheduled if not handle.cancelled()]

    async def test(server: MetricsServer) -> None:
        assert armed() == []
        await exchange(server, b"GET /metrics HTTP/1.0\r\n\r\n")
        await wait_until_async(lambda: not server.clients)
        assert armed() == []

    with_server(test)
