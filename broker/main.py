"""The ``chapiteau`` command: read the config, bind, drop privileges, run the broker.

The order is the trust model: everything that can fail for a reason the
operator must fix (config, user, file access, binding) happens first, in the
foreground, with a one-line error and a non-zero exit, before anything is
started. Only then does the broker daemonize (if asked), drop its privileges
and start the supervisor as the service user. Start-up ends when that
supervisor is ready: until then the caller's stderr (or, with ``--daemon``,
the foreground process) waits to hear whether the service runs.
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
    drop_privileges,
    needed_capabilities,
    resolve_service_user,
    running_as_root,
    supervisor_files,
)
from chapiteau.broker.socket_table import bind_all, close_all
from chapiteau.broker.startup import StartupReport, daemonize
from chapiteau.protocol.channel import reserve_standard_fds
from chapiteau.protocol.ini import LOG_LEVELS, ConfigError

VERSION = "0.1.0"
log = structlog.get_logger("chapiteau.broker")
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
"""Given to the broker by systemd (or a test): they belong to this process, never to a child."""
DAEMON_NEEDS_LOG_OUTPUT = (
    "--daemon needs --log-output FILE (or [circus] logoutput = FILE): a daemon has no "
    "stderr to log to; under systemd, run chapiteau in the foreground (logs go to the journal)"
)


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
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="detach and run in the background (needs --log-output); returns once the "
        "service runs, or with the error",
    )
    parser.add_argument("--pidfile", help="write the broker's pid here (signal this process)")
    parser.add_argument("--version", action="version", version=f"chapiteau {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    reserve_standard_fds()
    for name in SYSTEMD_VARIABLES:
        os.environ.pop(name, None)
    args = parse_args(argv)
    # Start-up errors go to the caller's stderr even once logs go to --log-output.
    console = sys.stderr
    sockets: dict[str, BoundSocket] = {}
    report: StartupReport | None = None
    try:
        config = load_broker_config(args.config)
        # The command line wins over [circus], as with circusd.
        args.log_level = args.log_level or config.loglevel or "info"
        args.log_output = args.log_output or config.logoutput
        args.pidfile = args.pidfile or config.pidfile
        if args.daemon and not args.log_output:
            raise ConfigError(DAEMON_NEEDS_LOG_OUTPUT)
        user = resolve_service_user(config.user, config.group)
        if config.socket_path is None:
            check_access(user, supervisor_files(config))
        if args.pidfile:
            check_pidfile(args.pidfile)
        if args.log_output:
            console = _redirect_output(args.log_output)
        # Only now: whether to colour depends on where stderr ends up.
        log_sink = configure_logging(args.log_level, args.log_format)
        if config.loggerconfig:
            log.warning(
                "loggerconfig_ignored",
                loggerconfig=config.loggerconfig,
                hint="chapiteau logs with structlog: use --log-format json and --log-output",
            )
        sockets = bind_all(config.sockets.values())
        listener = listen_for_supervisors(config.socket_path, user) if config.socket_path else None
        if args.daemon:
            report = daemonize(console)
        if args.pidfile:
            write_pidfile(args.pidfile)
    except (ConfigError, PrivilegeError, BindError, PidfileError, OSError) as exc:
        close_all(sockets.values())
        if report is None:
            print(f"chapiteau: {exc}", file=console)
        else:
            report.failed(1, str(exc))
        return 1
    if report is None:
        # Without --log-output the log is the caller's stderr: it tells everything.
        report = StartupReport(None if console is sys.stderr else console)
    if running_as_root():
        drop_privileges(needed_capabilities(config))
    options = ["--log-level", args.log_level, "--log-format", args.log_format]
    try:
        return Broker(config, sockets, user, options, listener, report, log_sink).run()
    finally:
        if args.pidfile:
            remove_pidfile(args.pidfile)


def _redirect_output(path: str) -> TextIO:
    """Point fds 1 and 2 at ``path`` (the broker's log; the supervisor's output is relayed there).

    Returns the previous stderr, for the start-up error an operator must see.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    console = os.fdopen(os.dup(2), "w")
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console
