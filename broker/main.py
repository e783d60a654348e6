"""The ``chapiteau`` command: read the config, bind, drop privileges, run the broker.

The order is the trust model: everything that can fail for a reason the
operator must fix (config, user, file access, binding) happens first, in the
foreground, with a one-line error and a non-zero exit, before anything is
started. Only then does the broker daemonize (if asked), fork the launcher
that will start each supervisor as the service user, and confine itself for
good (its own uid, a few capabilities, Landlock, seccomp: broker/confinement.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import structlog

from chapiteau.broker.binding import BindError, BoundSocket
from chapiteau.broker.broker import Broker, listen_for_supervisors
from chapiteau.broker.config import load_broker_config
from chapiteau.broker.confinement import confine
from chapiteau.broker.launcher import fork_launcher
from chapiteau.broker.logs import configure_logging
from chapiteau.broker.pidfile import (
    PidfileError,
    check_pidfile,
    remove_pidfile,
    write_pidfile,
)
from chapiteau.broker.privileges import (
    PrivilegeError,
    check_access,
    resolve_broker_user,
    resolve_service_user,
    supervisor_files,
)
from chapiteau.broker.socket_table import bind_all, close_all
from chapiteau.protocol.channel import reserve_standard_fds
from chapiteau.protocol.ini import LOG_LEVELS, ConfigError

VERSION = "0.1.0"
log = structlog.get_logger("chapiteau.broker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chapiteau",
        description="Bind the sockets of a Circus-style config as root, then run its "
        "watchers under an unprivileged supervisor.",
    )
    parser.add_argument("config", help="the INI configuration file (Circus format)")
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="default: [circus] loglevel, or info",
    )
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument(
        "--log-output", help="append all logs (broker, supervisor, workers) to this file"
    )
    parser.add_argument("--daemon", action="store_true", help="detach and run in the background")
    parser.add_argument("--pidfile", help="write the broker's pid here (signal this process)")
    parser.add_argument("--version", action="version", version=f"chapiteau {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    reserve_standard_fds()
    args = parse_args(argv)
    # Start-up errors go to the caller's stderr even once logs go to --log-output.
    console = sys.stderr
    sockets: dict[str, BoundSocket] = {}
    try:
        config = load_broker_config(args.config)
        # The command line wins over [circus], as with circusd.
        args.log_level = args.log_level or config.loglevel or "info"
        args.log_output = args.log_output or config.logoutput
        args.pidfile = args.pidfile or config.pidfile
        user = resolve_service_user(config.user, config.group)
        broker_user = resolve_broker_user(config.broker_user, user)
        if config.socket_path is None:
            check_access(user, supervisor_files(config))
        if args.pidfile:
            check_pidfile(args.pidfile)
        if args.log_output:
            console = _redirect_output(args.log_output)
        # Only now: whether to colour depends on where stderr ends up.
        configure_logging(args.log_level, args.log_format)
        if config.loggerconfig:
            log.warning(
                "loggerconfig_ignored",
                loggerconfig=config.loggerconfig,
                hint="chapiteau logs with structlog: use --log-format json and --log-output",
            )
        sockets = bind_all(config.sockets.values())
        owner = broker_user.uid if broker_user else -1
        listener = (
            listen_for_supervisors(config.socket_path, user, owner) if config.socket_path else None
        )
        if args.daemon:
            _daemonize(keep_output=bool(args.log_output))
        if args.pidfile:
            write_pidfile(args.pidfile)
    except (ConfigError, PrivilegeError, BindError, PidfileError, OSError) as exc:
        close_all(sockets.values())
        print(f"chapiteau: {exc}", file=console)
        return 1
    if console is not sys.stderr:
        console.close()
    # Connect mode: the supervisor is started by someone else; nothing to launch.
    launcher = None if config.socket_path else fork_launcher(user)
    try:
        confined = confine(config, args.pidfile, broker_user, user)
    except OSError as exc:
        # Never run half-confined: stop before serving anything.
        log.error("confinement_failed", error=str(exc))
        close_all(sockets.values())
        return 1
    log.info(
        "broker_confined",
        uid=confined.uid,
        capabilities=list(confined.capabilities),
        landlock_abi=confined.landlock_abi,
        seccomp_rules=confined.seccomp_rules,
        launcher=launcher.pid if launcher else None,
    )
    options = ["--log-level", args.log_level, "--log-format", args.log_format]
    try:
        return Broker(config, sockets, user, launcher, options, listener).run()
    finally:
        if args.pidfile:
            remove_pidfile(args.pidfile)


def _redirect_output(path: str) -> TextIO:
    """Point fds 1 and 2 at ``path`` (the supervisor and workers inherit them).

    Returns the previous stderr, for the start-up error an operator must see.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    console = os.fdopen(os.dup(2), "w")
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console


def _daemonize(keep_output: bool) -> None:
    """Double fork, new session, stdio on /dev/null unless redirected to a log file.

    Output goes to /dev/null even when it is a pipe, not only a terminal: a
    daemon that kept its caller's pipe open would make the caller wait forever.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if not keep_output:
        os.dup2(null, 1)
        os.dup2(null, 2)
    os.close(null)
