"""The supervisor program: get the sockets from the broker, load the config, run the arbiter.

Started by the broker as the service user (``--broker-fd``), or separately
in connect mode (``--broker-socket PATH``). A configuration it refuses makes
it exit with status 78 (EX_CONFIG) and a one-line message, which the broker
reports instead of restarting it in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import structlog

from chapiteau.protocol.constants import BROKER_FD_VARIABLE, EX_CONFIG, SUPERVISOR_START_VARIABLE
from chapiteau.protocol.ini import LOG_LEVELS, ConfigError
from chapiteau.protocol.log_lines import LOG_FORMATS, fatal_line
from chapiteau.protocol.standard_fds import reserve_standard_fds
from chapiteau.supervisor.arbiter import Arbiter
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError
from chapiteau.supervisor.children.spawn import trust_own_fds
from chapiteau.supervisor.config import Config, load_config
from chapiteau.supervisor.hooks import HookError
from chapiteau.supervisor.io.streams import StreamConfigError
from chapiteau.supervisor.logs import configure_logging
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.upgrade import CHECK_FLAG

EX_UNAVAILABLE = 69
log = structlog.get_logger("chapiteau.supervisor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chapiteau-supervisor",
        description="Run the watchers of a Circus-style config with sockets from a "
        "chapiteau broker.",
    )
    parser.add_argument("config", help="the INI configuration file (Circus format)")
    channel = parser.add_mutually_exclusive_group()
    channel.add_argument("--broker-fd", type=int, help="the inherited broker channel fd")
    channel.add_argument("--broker-socket", help="connect to a broker listening on this path")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="console")
    parser.add_argument(
        CHECK_FLAG,
        action="store_true",
        help="load the code and the config, then exit: 0 when this supervisor would start "
        "(what ``chapiteauctl upgrade`` runs first)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    reserve_standard_fds()
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fatal(args, exc, EX_CONFIG)
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    if args.check:
        return 0
    try:
        broker = _connect(args)
        sockets = SocketPool(broker, _receive_sockets(broker, config))
        arbiter = Arbiter(config, broker, sockets, _supervisor_start())
    except (ConfigError, HookError, StreamConfigError) as exc:
        return _fatal(args, exc, EX_CONFIG)
    except BrokerError as exc:
        return _fatal(args, exc, EX_UNAVAILABLE)
    trust_own_fds()
    return asyncio.run(arbiter.run())


def _fatal(args: argparse.Namespace, error: Exception, status: int) -> int:
    """Say why the supervisor cannot run, one line in the log format; return ``status``."""
    print(fatal_line("chapiteau-supervisor", args.log_format, str(error)), file=sys.stderr)
    return status


def _connect(args: argparse.Namespace) -> BrokerClient:
    if args.broker_socket:
        return BrokerClient.connect(args.broker_socket)
    fd = args.broker_fd
    if fd is None and os.environ.get(BROKER_FD_VARIABLE, "").isdigit():
        fd = int(os.environ[BROKER_FD_VARIABLE])
    if fd is None:
        raise BrokerError(
            "no broker: start chapiteau (the broker), or pass --broker-socket in connect mode"
        )
    os.environ.pop(BROKER_FD_VARIABLE, None)
    return BrokerClient.from_fd(fd)


def _supervisor_start() -> int | None:
    """Which supervisor the broker started this one as (1 = the first), from the variable
    it sets; None when unset (connect mode). The workers do not inherit it."""
    text = os.environ.pop(SUPERVISOR_START_VARIABLE, "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _receive_sockets(broker: BrokerClient, config: Config) -> dict:
    """Every socket of the config, from the broker; a name it does not serve is a config error."""
    served = {info.name for info in broker.list_sockets()}
    for socket_config in config.sockets:
        if socket_config.name not in served:
            raise ConfigError(
                f"the broker has no socket {socket_config.name!r}; it reads [socket:*] only at "
                f"start and on reloadconfig",
                file=config.path,
                section=f"socket:{socket_config.name}",
            )
    return broker.get_sockets([s.name for s in config.sockets])
