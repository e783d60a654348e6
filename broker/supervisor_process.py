"""Start the supervisor as the service user, with one end of the broker channel.

The confined broker cannot fork a usable supervisor (its seccomp filter and
Landlock domain would be inherited): it asks its launcher (broker/launcher.py),
which switches the credentials with the standard library's fork_exec
(setgroups, then setgid, then setuid, each checked, before exec), so a failed
switch is a start error and never a supervisor running as root. The
supervisor gets its own session, so a terminal's Ctrl-C reaches only the
broker, which then stops the supervisor in order; it is the broker's child.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chapiteau.broker.config import BrokerConfig
from chapiteau.broker.launcher import Launcher, LaunchError
from chapiteau.broker.privileges import ServiceUser

BROKER_FD_VARIABLE = "CHAPITEAU_BROKER_FD"
EX_CONFIG = 78
"""The supervisor's exit status when it refuses the configuration (sysexits.h)."""


class SupervisorStartError(Exception):
    """The supervisor program could not be started at all."""


@dataclass
class Supervisor:
    """The running supervisor: the broker's child, reaped by the broker's loop."""

    pid: int
    returncode: int | None = None

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


def supervisor_environment(user: ServiceUser, channel_fd: int, base: Mapping[str, str]) -> dict:
    """The broker's environment, with the identity variables of the service user."""
    env = dict(base)
    env[BROKER_FD_VARIABLE] = str(channel_fd)
    try:
        entry = pwd.getpwuid(user.uid)
    except KeyError:
        return env
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    return env


def start_supervisor(
    launcher: Launcher, argv: list[str], user: ServiceUser, channel_fd: int
) -> Supervisor:
    """Have the launcher start the supervisor as ``user``, passing only ``channel_fd`` beyond stdio.

    The fd keeps its number in the supervisor, the one ``argv`` names.
    """
    env = supervisor_environment(user, channel_fd, os.environ)
    try:
        return Supervisor(launcher.start(argv, env, {channel_fd: channel_fd}))
    except LaunchError as exc:
        raise SupervisorStartError(str(exc)) from None
