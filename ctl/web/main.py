"""``chapiteau-web``: the command line of the dashboard, and the rule that it is never open.

Without ``--auth-file`` it serves only on a loopback address; on any other
address it refuses to start. ``--fd`` serves on a socket the broker bound (the
watcher ``httpd = true`` adds passes ``--fd $(circus.sockets.circushttpd)``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import socket
import sys

from aiohttp import web

from chapiteau.ctl.web.app import Credentials, Settings, make_app
from chapiteau.ctl.web.supervisor_link import SupervisorLink
from chapiteau.protocol.constants import DEFAULT_ENDPOINT, DEFAULT_PUBSUB_ENDPOINT


class UsageError(Exception):
    """A mistake in the command line or the credentials file; the message says how to fix it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chapiteau-web", description="The live dashboard of a chapiteau supervisor."
    )
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the control endpoint")
    parser.add_argument("--pubsub", default=DEFAULT_PUBSUB_ENDPOINT, help="the pubsub endpoint")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--fd", type=int, help="serve on this already bound socket instead")
    parser.add_argument("--auth-file", help="file of 'user:password' lines; required off loopback")
    parser.add_argument("--read-only", action="store_true", help="show, never act")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    return parser.parse_args(argv)


def read_credentials(path: str) -> Credentials:
    """The ``user:password`` lines of ``path`` (blank lines and ``#`` comments skipped)."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--auth-file {path}: {exc}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            raise UsageError(
                f"--auth-file {path}, line {number}: write 'user:password' (both non-empty)"
            )
        pairs.append((user, password))
    if not pairs:
        raise UsageError(f"--auth-file {path}: no 'user:password' line in it")
    return Credentials(tuple(pairs))


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; false for anything else (``0.0.0.0`` too)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def refuse_open_access(host: str) -> None:
    """`UsageError` unless ``host`` is a loopback address (the check when there is no auth)."""
    if not is_loopback(host):
        raise UsageError(
            f"refusing to serve the dashboard on {host} without authentication: "
            "give --auth-file, or listen on 127.0.0.1"
        )


def listening_socket(args: argparse.Namespace) -> socket.socket:
    """The socket to serve on: the one passed by fd, or a new one bound to --host/--port."""
    if args.fd is not None:
        try:
            return socket.socket(fileno=args.fd)
        except OSError as exc:
            raise UsageError(f"--fd {args.fd}: {exc}") from None
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {args.host} --port {args.port}: {exc}") from None
    sock.listen(128)
    return sock


async def serve(sock: socket.socket, settings: Settings) -> None:
    """Serve the dashboard on ``sock`` until SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = web.AppRunner(make_app(settings), shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        credentials = read_credentials(args.auth_file) if args.auth_file else None
        if credentials is None and args.fd is None:
            refuse_open_access(args.host)
        sock = listening_socket(args)
        host = sock.getsockname()[0] if sock.family != socket.AF_UNIX else "localhost"
        if credentials is None:
            refuse_open_access(host)
    except UsageError as exc:
        print(f"chapiteau-web: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        link=SupervisorLink(args.endpoint, args.pubsub),
        credentials=credentials,
        read_only=args.read_only,
        interval=args.interval,
    )
    print(f"chapiteau-web: serving on {host} port {sock.getsockname()[1]}", flush=True)
    asyncio.run(serve(sock, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
