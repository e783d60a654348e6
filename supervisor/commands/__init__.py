"""Run one control request against the arbiter and build its Circus reply.

`dispatch` looks the command up, checks its required properties, runs it and
maps failures to Circus's errno values: the client's
mistakes are errno 3 with Circus's reason texts, an OSError is errno 4, and
anything unexpected is errno 5 with the traceback. Nothing here takes a
global lock: commands on different watchers run concurrently and commands
on one watcher queue on that watcher's lock.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import structlog

from chapiteau.protocol.circus_messages import (
    BAD_MSG_DATA_ERROR,
    COMMAND_ERROR,
    MESSAGE_ERROR,
    OS_ERROR,
    UNKNOWN_COMMAND,
    Request,
    error,
    ok,
)
from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.commands import info, options, watchers
from chapiteau.supervisor.commands.base import COMMANDS, CommandError, Deferred, Supervisor
from chapiteau.supervisor.hooks import HookError
from chapiteau.supervisor.io.streams import StreamConfigError
from chapiteau.supervisor.watcher import ReloadError

__all__ = ["COMMANDS", "CommandError", "dispatch", "info", "options", "watchers"]

log = structlog.get_logger("chapiteau.supervisor")

_background: set[asyncio.Task[Any]] = set()
UNKNOWN = "unknown"
"""How ``arbiter.requests`` names every command that does not exist."""


async def dispatch(arbiter: Supervisor, request: Request, raw: bytes) -> dict[str, Any] | None:
    """The reply to ``request`` (None for a cast); never raises.

    Each request is counted in ``arbiter.requests`` by command and reply
    status; a command that does not exist counts as ``unknown``, so a client
    cannot grow the table with made-up names.
    """
    reply = await _run(arbiter, request, raw)
    if arbiter.handover is not None:
        # What the command changed survives a kill -9 of the supervisor once it is told.
        arbiter.handover.flush()
    command = request.command if request.command in COMMANDS else UNKNOWN
    arbiter.requests[command, reply["status"]] += 1
    return None if request.cast else reply


async def _run(arbiter: Supervisor, request: Request, raw: bytes) -> dict[str, Any]:
    found = COMMANDS.get(request.command)
    if found is None:
        return error(
            f"unknown command: {request.command!r}", UNKNOWN_COMMAND, request.id, now=time.time()
        )
    props = request.properties
    for name in found.required:
        if name not in props:
            return error(
                f"message invalid {name!r} is missing", MESSAGE_ERROR, request.id, now=time.time()
            )
    log.debug("command_received", command=request.command, properties=props)
    try:
        result = await found.handler(arbiter, props)
        if isinstance(result, Deferred):
            if not request.waiting and not request.cast:
                _in_background(request.command, result)
                if result.started is not None and (failure := await result.started):
                    raise failure
                return ok({}, request.id, now=time.time())
            try:
                result = result.shape(await result.work)
            except (CommandError, ReloadError):
                raise
            except Exception as exc:  # the work failed after the checks passed
                log.error("command_failed", command=request.command, error=str(exc), exc_info=True)
                return error(
                    f"server error: {exc}",
                    BAD_MSG_DATA_ERROR,
                    request.id,
                    traceback.format_exc(),
                    now=time.time(),
                )
        return ok(result, request.id, now=time.time())
    except CommandError as exc:
        return error(exc.reason, exc.errno, request.id, now=time.time())
    except (ConfigError, HookError, StreamConfigError, ReloadError) as exc:
        return error(str(exc), MESSAGE_ERROR, request.id, now=time.time())
    except OSError as exc:
        return error(str(exc), OS_ERROR, request.id, now=time.time())
    except Exception as exc:  # a bug must cost one reply, not the control socket
        log.error("command_crashed", command=request.command, error=str(exc), exc_info=True)
        return error(
            f"command {raw!r}: {exc}",
            COMMAND_ERROR,
            request.id,
            traceback.format_exc(),
            now=time.time(),
        )


def _in_background(name: str, deferred: Deferred) -> None:
    async def run() -> None:
        try:
            await deferred.work
        except CommandError as exc:  # the client's mistake, answered when it was `started`
            log.warning("command_failed", command=name, error=exc.reason)
        except Exception as exc:  # nobody waits for this reply: the log is the only place
            log.error("command_failed", command=name, error=str(exc), exc_info=True)

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
