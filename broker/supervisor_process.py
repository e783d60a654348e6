"""Start the supervisor as the service user, with one end of the broker channel.

The child's credentials are switched by the standard library's fork_exec
(setgroups, then setgid, then setuid, each checked, before exec), so a failed
switch is an OSError in the broker and never a supervisor running as root.
The supervisor gets its own session, so a terminal's Ctrl-C reaches only the
broker, which then stops the supervisor in order.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Mapping, Sequence

from chapiteau.broker.config import BrokerConfig
from chapiteau.broker.privileges import ServiceUser, running_as_root

BROKER_FD_VARIABLE = "CHAPITEAU_BROKER_FD"
EX_CONFIG = 78
"""The supervisor's exit status when it refuses the configuration (sysexits.h)."""


class SupervisorStartError(Exception):
    """The supervisor program could not be started at all."""


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


def start_supervisor(argv: list[str], user: ServiceUser, channel_fd: int) -> subprocess.Popen:
    """Fork and exec the supervisor as ``user``, passing only ``channel_fd`` beyond stdio."""
    credentials: dict = {}
    if running_as_root():
        credentials = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    try:
        return subprocess.Popen(
            argv,
            pass_fds=(channel_fd,),
            env=supervisor_environment(user, channel_fd, os.environ),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **credentials,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SupervisorStartError(f"cannot start the supervisor {argv[0]}: {exc}") from None
