"""Start the supervisor as the service user, with one end of the broker channel.

The confined broker cannot fork a usable supervisor (its seccomp filter and
Landlock domain would be inherited): it asks its launcher (broker/launcher.py),
which switches the credentials with the standard library's fork_exec
(setgroups, then setgid, then setuid, each checked, before exec), so a failed
switch is a start error and never a supervisor running as root. The
supervisor gets its own session, so a terminal's Ctrl-C reaches only the
broker, which then stops the supervisor in order; it is the broker's child. It gets none of the
broker's open files (its stdout and stderr are pipes the broker reads) and
only an allow-listed environment: root's environment may hold secrets.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
from collections.abc import Mapping, Sequence

from chapiteau.broker.config import BrokerConfig
from chapiteau.broker.launcher import Launcher, LaunchError
from chapiteau.broker.privileges import ServiceUser
from chapiteau.protocol.constants import (
    BROKER_FD_VARIABLE,
    INSTANCE_VARIABLE,
    SUPERVISOR_START_VARIABLE,
)

PASSED_VARIABLES = ("PATH", "LANG", "LC_*", "TZ", "PYTHONPATH")
"""Copied from the broker's environment: where programs are, the locale, the time zone,
and the import path the supervisor (the same Python program as the broker) needs."""


class SupervisorStartError(Exception):
    """The supervisor program could not be started at all."""


class Supervisor:
    """The running supervisor: the broker's child, reaped by the broker's loop."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int, returncode: int | None = None) -> None:
        self.pid = pid
        self.returncode = returncode

    def send_signal(self, signum: int) -> None:
        """Signal it unless reaped (until then its pid cannot be reused)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def supervisor_argv(config: BrokerConfig, channel_fd: int, options: Sequence[str]) -> list[str]:
    """The supervisor's command line: the configured override, or this interpreter's module."""
    if config.supervisor_command is not None:
        return list(config.supervisor_command)
    return [
        sys.executable,
        "-m",
        "chapiteau.supervisor",
        "--broker-fd",
        str(channel_fd),
        *options,
        config.path,
    ]


def supervisor_environment(
    user: ServiceUser,
    channel_fd: int,
    base: Mapping[str, str],
    passed: Sequence[str] = (),
    start: int = 1,
    instance: str | None = None,
) -> dict[str, str]:
    """The supervisor's environment: only the allow-listed variables of ``base``.

    PASSED_VARIABLES and the ``passed`` names or ``PREFIX*`` patterns
    (``[broker] supervisor_env``) are copied; HOME, USER, LOGNAME and SHELL
    describe the service user; CHAPITEAU_BROKER_FD names the channel and
    CHAPITEAU_SUPERVISOR_START says how many supervisors the broker has started,
    this one included (``start``); CHAPITEAU_INSTANCE is ``instance``, the real
    path of the config, which the supervisor passes on to every worker (the
    mark a later broker looks for: broker/orphans.py). Nothing
    else of root's environment (secrets, for one) reaches the supervisor, nor
    its ``copy_env`` workers.
    """
    patterns = (*PASSED_VARIABLES, *passed)
    env = {
        name: value
        for name, value in base.items()
        if any(_matches(name, pattern) for pattern in patterns)
    }
    env[BROKER_FD_VARIABLE] = str(channel_fd)
    env[SUPERVISOR_START_VARIABLE] = str(start)
    if instance is not None:
        env[INSTANCE_VARIABLE] = instance
    try:
        entry = pwd.getpwuid(user.uid)
    except KeyError:
        return env
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name, SHELL=entry.pw_shell)
    return env


def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def start_supervisor(
    launcher: Launcher,
    argv: list[str],
    channel_fd: int,
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
) -> Supervisor:
    """Have the launcher start the supervisor, passing only ``channel_fd`` beyond stdio.

    It runs as the service user the launcher was forked for. Its stdin is
    /dev/null and its stdout and stderr are ``stdout`` and ``stderr`` (the
    write ends of pipes the broker reads), never the broker's own; the channel
    keeps its fd number, the one ``argv`` names.
    """
    fds = {channel_fd: channel_fd, 1: stdout, 2: stderr}
    try:
        return Supervisor(launcher.start(argv, env, fds))
    except LaunchError as exc:
        raise SupervisorStartError(str(exc)) from None
