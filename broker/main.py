"""The ``chapiteau`` command: read the config, bind, drop privileges, run the broker.

The order is the trust model: everything that can fail for a reason the
operator must fix (config, user, file access, the sockets: taken from systemd,
recovered from a crashed broker's workers or bound) happens first, in the
foreground, with a one-line error and a non-zero exit, before anything is
started. Only then does the broker daemonize (if asked), fork the launcher
that will start each supervisor as the service user, and confine itself for
good (its own uid, a few capabilities, Landlock, seccomp: broker/confinement.py).
Start-up ends when that supervisor is ready: until then the caller's stderr
(or, with ``--daemon``, the foreground process) waits to hear whether the
service runs.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from functools import partial

from chapiteau.broker import fd_store
from chapiteau.broker.binding import BindError, BoundSocket, check_unix_path, release
from chapiteau.broker.broker import Broker, listen_for_supervisors
from chapiteau.broker.command_line import CommandLine, parse_args
from chapiteau.broker.config import BrokerConfig, load_broker_config
from chapiteau.broker.confinement import confine
from chapiteau.broker.event_log import log
from chapiteau.broker.inherited import InheritError, take_listen_fds
from chapiteau.broker.launcher import fork_launcher
from chapiteau.broker.logs import LogFile, configure_logging
from chapiteau.broker.pidfile import (
    PidfileError,
    check_pidfile,
    remove_pidfile,
    write_pidfile,
)
from chapiteau.broker.privileges import (
    PrivilegeError,
    ServiceUser,
    check_access,
    resolve_broker_user,
    resolve_service_user,
    supervisor_files,
)
from chapiteau.broker.safe_paths import (
    UnsafePathError,
    check_trusted_file,
    make_directory,
    open_parent,
)
from chapiteau.broker.sd_notify import Notifier
from chapiteau.broker.socket_table import close_all, open_all, steer
from chapiteau.broker.startup import StartupReport, daemonize
from chapiteau.protocol.constants import SYSTEMD_VARIABLES
from chapiteau.protocol.ini import ConfigError
from chapiteau.protocol.log_lines import fatal_line
from chapiteau.protocol.standard_fds import reserve_standard_fds

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from chapiteau.broker.logs import LogSink
    from chapiteau.broker.orphans import Orphan
    from chapiteau.broker.safe_paths import Entry

DAEMON_NEEDS_LOG_OUTPUT = (
    "--daemon needs --log-output FILE (or [circus] logoutput = FILE): a daemon has no "
    "stderr to log to; under systemd, run chapiteau in the foreground (logs go to the journal)"
)

STARTUP_ERRORS = (
    ConfigError,
    PrivilegeError,
    BindError,
    InheritError,
    PidfileError,
    UnsafePathError,
    OSError,
)


def main(argv: list[str] | None = None) -> int:
    """``chapiteau``: every check and bind in the foreground, then detach if asked, and serve."""
    reserve_standard_fds()
    # The one notifier of the broker's life: made before anything is spawned.
    notifier = Notifier.from_environment()
    systemd = {name: os.environ.pop(name) for name in SYSTEMD_VARIABLES if name in os.environ}
    args = parse_args(argv)
    if args.check_config:
        return check_config(args)
    start = Start(args, notifier)
    try:
        start.read_config()
        start.check_users_and_files()
        start.open_log()
        start.prepare_paths()
        start.bind(systemd)
        start.detach()
    except STARTUP_ERRORS as exc:
        return start.refuse(exc)
    return start.serve()


class Start:
    """One start of the broker, a step a method: what each step made, for the next ones.

    Every step up to `detach` may fail with one of `STARTUP_ERRORS`, which
    `refuse` reports after undoing what was bound; `serve` runs the broker.
    """

    config: BrokerConfig
    user: ServiceUser
    broker_user: ServiceUser | None
    log_sink: LogSink

    def __init__(self, args: CommandLine, notifier: Notifier) -> None:
        self.args = args
        self.notifier = notifier
        # Start-up errors go to the caller's stderr even once logs go to --log-output.
        self.console: TextIO = sys.stderr
        self.sockets: dict[str, BoundSocket] = {}
        self.orphans: list[Orphan] = []
        self.listener: socket.socket | None = None
        self.listener_file: Entry | None = None
        self.log_file: LogFile | None = None
        self.report: StartupReport | None = None

    def read_config(self) -> None:
        """The config, with the command line winning over ``[circus]`` (as with circusd)."""
        args = self.args
        self.config = config = load_broker_config(args.config)
        args.log_level = args.log_level or config.loglevel or "info"
        args.log_output = args.log_output or config.logoutput
        args.pidfile = args.pidfile or config.pidfile
        if args.daemon and not args.log_output:
            raise ConfigError(DAEMON_NEEDS_LOG_OUTPUT)

    def check_users_and_files(self) -> None:
        """Who the service and the broker run as, and that they may use the files they need."""
        config = self.config
        self.user = user = resolve_service_user(config.user, config.group)
        self.broker_user = resolve_broker_user(config.broker_user, user)
        for path in config.files:
            check_trusted_file(path, user)
        if config.socket_path is None:
            check_access(user, supervisor_files(config))

    def open_log(self) -> None:
        """Point the output at ``--log-output`` (if given), then configure logging."""
        if self.args.log_output:
            self.log_file = LogFile(self.args.log_output, self.user)
            self.console = _redirect_output(self.log_file)
        # Only now: whether to colour depends on where stderr ends up.
        self.log_sink = configure_logging(self.args.log_level, self.args.log_format)
        if self.config.loggerconfig:
            log.warning(
                "loggerconfig_ignored",
                loggerconfig=self.config.loggerconfig,
                hint="chapiteau writes its own log lines: use --log-format json and --log-output",
            )

    def prepare_paths(self) -> None:
        """Make the runtime directory; check that the pidfile may be written."""
        if self.config.runtime_directory:
            make_runtime_directory(self.config, self.user)
        if self.args.pidfile:
            check_pidfile(self.args.pidfile, self.user)

    def bind(self, systemd: dict[str, str]) -> None:
        """The sockets (given by ``systemd``, recovered or bound), and the supervisors' listener."""
        config, broker_user = self.config, self.broker_user
        creators = {os.geteuid(), *([broker_user.uid] if broker_user else [])}
        self.sockets, self.orphans = open_all(config, self.user, take_listen_fds(systemd), creators)
        # Now or never: once confined, the broker may not call bpf(2).
        steer(self.sockets)
        fd_store.store(self.notifier, self.sockets)
        if config.socket_path:
            owner = broker_user.uid if broker_user else -1
            self.listener, self.listener_file = listen_for_supervisors(
                config.socket_path, self.user, owner
            )

    def detach(self) -> None:
        """With ``--daemon``, go to the background; then write the pidfile (the daemon's pid)."""
        args = self.args
        if args.daemon:
            assert args.log_output is not None
            self.report = daemonize(
                self.console, args.log_format, args.start_timeout, args.log_output
            )
        if args.pidfile:
            write_pidfile(args.pidfile, self.user)

    def refuse(self, exc: Exception) -> int:
        """A step failed: release what was bound, say why where the caller sees it; 1."""
        close_all(self.sockets.values())
        if self.listener is not None:
            self.listener.close()
        if self.listener_file is not None:
            release(self.listener_file)
        if self.report is None:
            print(fatal_line("chapiteau", self.args.log_format, str(exc)), file=self.console)
        else:
            self.report.failed(1, str(exc))
        return 1

    def serve(self) -> int:
        """Fork the launcher, confine the broker for good, and run it; its exit status."""
        args, config, user = self.args, self.config, self.user
        # Without --log-output the log is the caller's stderr: it tells everything.
        report = self.report or StartupReport(
            None if self.console is sys.stderr else self.console, args.log_format
        )
        # Connect mode: the supervisor is started by someone else; nothing to launch.
        launcher = None if config.socket_path else fork_launcher(user)
        try:
            try:
                log_directory = self.log_file.directory.path if self.log_file else None
                confined = confine(config, args.pidfile, log_directory, self.broker_user, user)
            except OSError as exc:
                # Never run half-confined: stop before serving anything.
                log.error("confinement_failed", error=str(exc))
                report.failed(1, f"cannot confine the broker: {exc}")
                close_all(self.sockets.values())
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
            broker = Broker(
                config,
                self.sockets,
                user,
                launcher,
                options,
                self.listener,
                report,
                self.log_sink,
                self.log_file,
                self.notifier,
                self.orphans,
            )
            return broker.run()
        finally:
            if self.listener_file is not None:
                release(self.listener_file)
            if args.pidfile:
                remove_pidfile(args.pidfile, user)


def make_runtime_directory(config: BrokerConfig, user: ServiceUser) -> None:
    """Make ``[broker] runtime_directory`` for the service user, as systemd's RuntimeDirectory=."""
    assert config.runtime_directory is not None
    try:
        make_directory(
            config.runtime_directory,
            user,
            config.runtime_directory_mode,
            user.uid,
            user.gid,
            adopt=True,
        )
    except (UnsafePathError, OSError) as exc:
        raise UnsafePathError(f"[broker] runtime_directory: {exc}") from None
    log.info("runtime_directory_ready", path=config.runtime_directory, user=user.name)


def check_config(args: CommandLine) -> int:
    """``--check-config``: print every problem found, touch nothing; 0 when there is none."""
    try:
        config = load_broker_config(args.config)
        user = resolve_service_user(config.user, config.group)
    except STARTUP_ERRORS as exc:
        print(f"chapiteau: {exc}", file=sys.stderr)
        return 1
    problems = _path_problems(config, user, args)
    for problem in problems:
        print(f"chapiteau: {problem}", file=sys.stderr)
    if not problems:
        print(f"chapiteau: {args.config}: no problem found")
    return 1 if problems else 0


def _path_problems(config: BrokerConfig, user: ServiceUser, args: CommandLine) -> list[str]:
    """What would refuse the start, or make it unsafe, in the files and paths of ``config``.

    The same checks the start runs, on the same paths, without creating,
    binding or writing anything.
    """
    checks: list[tuple[str | None, Callable[[], object]]] = [
        (None, partial(check_trusted_file, path, user)) for path in config.files
    ]
    if config.socket_path is None:
        checks.append((None, partial(check_access, user, supervisor_files(config))))
    else:
        checks.append(("[broker] socket_path", partial(_check_listener_path, config, user)))
    checks += [
        (spec.where, partial(check_unix_path, spec.path, user, spec.type))
        for spec in config.sockets.values()
        if spec.path
    ]
    # Where the start acts: the pidfile's and the directory's own names, the log file's target.
    places = [
        ("[broker] runtime_directory", config.runtime_directory, False),
        ("pid file", args.pidfile or config.pidfile, False),
        ("log output", args.log_output or config.logoutput, True),
    ]
    checks += [
        (where, partial(_check_parent, path, user, follow))
        for where, path, follow in places
        if path
    ]
    problems = []
    for where, check in checks:
        try:
            check()
        except STARTUP_ERRORS as exc:
            problems.append(f"{where}: {exc}" if where else str(exc))
    return problems


def _check_listener_path(config: BrokerConfig, user: ServiceUser) -> None:
    """Connect mode: the socket's directory, or its parent when the start is to create it."""
    assert config.socket_path is not None
    directory = os.path.dirname(config.socket_path)
    if os.path.isdir(directory):
        check_unix_path(config.socket_path, user, socket.SOCK_SEQPACKET)
    else:
        _check_parent(directory, user)


def _check_parent(path: str, user: ServiceUser, follow: bool = False) -> None:
    directory, _ = open_parent(path, user, follow=follow)
    directory.close()


def _redirect_output(log_file: LogFile) -> TextIO:
    """Point fds 1 and 2 at the log file (the supervisor's output is relayed there).

    The file is opened as broker/safe_paths.py says: never through a link the
    service user could plant, never in a directory that user can write.
    Returns the previous stderr, for the start-up error an operator must see.
    """
    console = os.fdopen(os.dup(2), "w")
    try:
        log_file.point_standard_fds()
    except BaseException:
        console.close()
        raise
    return console
