"""Start the supervisor as the service user, with one end of the broker channel.

The child's credentials are switched by the standard library's fork_exec
(setgroups, then setgid, then setuid, each checked, before exec), so a failed
switch is an OSError in the broker and never a supervisor running as root.
The supervisor gets its own session, so a terminal's Ctrl-C reaches only the
broker, which then stops the supervisor in order. It gets none of the
broker's open files (its stdout and stderr are pipes the broker reads) and
only an allow-listed environment: root's environment may hold secrets.
"""

from __future__ import annotations

import pwd
import subprocess
import sys
from collections.abc import Mapping, Sequence

from chapiteau.broker.config import BrokerConfig
from chapiteau.broker.privileges import ServiceUser, running_as_root
from chapiteau.protocol.constants import BROKER_FD_VARIABLE

PASSED_VARIABLES = ("PATH", "LANG", "LC_*", "TZ", "PYTHONPATH")
"""Copied from the broker's environment: where programs are, the locale, the time zone,
and the import path the supervisor (the same Python program as the broker) needs."""


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


def supervisor_environment(
    user: ServiceUser, channel_fd: int, base: Mapping[str, str], passed: Sequence[str] = ()
) -> dict[str, str]:
    """The supervisor's environment: only the allow-listed variables of ``base``.

    PASSED_VARIABLES and the ``passed`` names or ``PREFIX*`` patterns
    (``[broker] supervisor_env``) are copied; HOME, USER, LOGNAME and SHELL
    describe the service user; CHAPITEAU_BROKER_FD names the channel. Nothing
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
    argv: list[str],
    user: ServiceUser,
    channel_fd: int,
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
) -> subprocess.Popen:
    """Fork and exec the supervisor as ``user``, passing only ``channel_fd`` beyond stdio.

    Its stdin is /dev/null and its stdout and stderr are ``stdout`` and
    ``stderr`` (the write ends of pipes the broker reads), never the broker's own.
    """
    credentials: dict = {}
    if running_as_root():
        credentials = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    try:
        return subprocess.Popen(
            argv,
            pass_fds=(channel_fd,),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            **credentials,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SupervisorStartError(f"cannot start the supervisor {argv[0]}: {exc}") from None
