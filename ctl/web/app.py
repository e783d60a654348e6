"""The dashboard's HTTP side (aiohttp): the page, a snapshot, the live stream, the buttons.

- ``GET /``: the static page (``static/``), which draws everything in the browser;
- ``GET /api/snapshot``: watchers with their lifecycle state and processes (pid,
  wid, age, CPU %, memory %), from the ``status`` (verbose) and ``stats`` commands;
- ``GET /api/stream``: server-sent events: a ``snapshot`` every ``interval``
  seconds and every pubsub event as an ``event``;
- ``POST /api/watchers/{name}/{action}``: start, stop, restart, reload, incr,
  decr; refused (403) in read-only mode. A POST must carry
  ``Content-Type: application/json``, which a cross-site form cannot send
  without the browser asking first (and this server never says yes).

Authentication (`Credentials`) is HTTP basic auth checked on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BasicAuth, web

from chapiteau.ctl.web.supervisor_link import SupervisorError, SupervisorLink

ACTIONS = ("start", "stop", "restart", "reload", "incr", "decr")
STATIC = importlib.resources.files("chapiteau.ctl.web") / "static"


@dataclass(frozen=True)
class Credentials:
    """The accepted ``user:password`` pairs (from ``--auth-file``)."""

    pairs: tuple[tuple[str, str], ...]

    def accept(self, header: str | None) -> bool:
        if not header:
            return False
        try:
            given = BasicAuth.decode(header)
        except ValueError:
            return False
        # Every pair is compared, so that the time taken says nothing about which one matched.
        matched = False
        for user, password in self.pairs:
            same_user = hmac.compare_digest(user.encode(), given.login.encode())
            same_password = hmac.compare_digest(password.encode(), given.password.encode())
            matched |= same_user and same_password
        return matched


@dataclass(frozen=True)
class Settings:
    """What the dashboard serves and how."""

    link: SupervisorLink
    credentials: Credentials | None
    read_only: bool
    interval: float = 1.0


SETTINGS = web.AppKey("settings", Settings)


@web.middleware
async def _authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    credentials = request.app[SETTINGS].credentials
    if credentials is not None and not credentials.accept(request.headers.get("Authorization")):
        return web.Response(
            status=401,
            text="authentication required\n",
            headers={"WWW-Authenticate": 'Basic realm="chapiteau", charset="UTF-8"'},
        )
    return await handler(request)


async def snapshot(link: SupervisorLink) -> dict[str, Any]:
    """Every watcher: its status word, lifecycle state, and per-process figures."""
    status = await link.call("status", {"verbose": True})
    stats = await link.call("stats")
    watchers = []
    for name in sorted(status.get("statuses", {})):
        processes = []
        for pid, info in sorted(stats.get("infos", {}).get(name, {}).items(), key=_by_pid):
            figures = info if isinstance(info, dict) else {}
            processes.append(
                {
                    "pid": int(pid),
                    "wid": figures.get("wid"),
                    "age": figures.get("age"),
                    "cpu": figures.get("cpu"),
                    "mem": figures.get("mem"),
                    "rss": figures.get("mem_info1"),
                }
            )
        watchers.append(
            {
                "name": name,
                "status": status["statuses"][name],
                "state": status.get("states", {}).get(name, {}),
                "processes": processes,
            }
        )
    return {"watchers": watchers}


def _by_pid(item: tuple[str, Any]) -> int:
    return int(item[0])


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(str(STATIC / "index.html"))


async def _config(request: web.Request) -> web.Response:
    return web.json_response({"read_only": request.app[SETTINGS].read_only})


async def _snapshot(request: web.Request) -> web.Response:
    try:
        return web.json_response(await snapshot(request.app[SETTINGS].link))
    except SupervisorError as exc:
        return web.json_response({"error": str(exc)}, status=502)


async def _stream(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1000)

    async def relay_events() -> None:
        async for topic, body in settings.link.events():
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(("event", {"topic": topic, **body}))

    async def tick() -> None:
        while True:
            try:
                current = await snapshot(settings.link)
            except SupervisorError as exc:
                current = {"error": str(exc)}
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(("snapshot", current))
            await asyncio.sleep(settings.interval)

    tasks = [asyncio.create_task(relay_events()), asyncio.create_task(tick())]
    try:
        while True:
            kind, data = await queue.get()
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in tasks:
            task.cancel()
    return response


async def _act(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.read_only:
        return web.json_response({"error": "the dashboard is read-only"}, status=403)
    if request.content_type != "application/json":
        return web.json_response({"error": "send Content-Type: application/json"}, status=415)
    action = request.match_info["action"]
    if action not in ACTIONS:
        return web.json_response({"error": f"unknown action {action!r}"}, status=404)
    try:
        reply = await settings.link.call(action, {"name": request.match_info["name"]})
    except SupervisorError as exc:
        return web.json_response({"error": str(exc)}, status=502)
    return web.json_response(reply)


def make_app(settings: Settings) -> web.Application:
    """The dashboard application, its supervisor link closed on shutdown."""
    app = web.Application(middlewares=[_authenticate])
    app[SETTINGS] = settings
    app.router.add_get("/", _page)
    app.router.add_get("/api/config", _config)
    app.router.add_get("/api/snapshot", _snapshot)
    app.router.add_get("/api/stream", _stream)
    app.router.add_post("/api/watchers/{name}/{action}", _act)
    app.router.add_static("/static/", str(STATIC))

    async def close_link(app: web.Application) -> None:
        settings.link.close()

    app.on_cleanup.append(close_link)
    return app
