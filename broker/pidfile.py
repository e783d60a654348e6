"""Write, check and remove the pidfile of the broker (the process an operator signals).

The broker is root: the pidfile is read, written and removed through the
verified directory fds of broker/safe_paths.py, so a pidfile in a directory
the service user can write is refused, and no planted link is ever followed.
"""

from __future__ import annotations

import contextlib
import os

from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.safe_paths import (
    Entry,
    UnsafePathError,
    open_parent,
    read_small_file,
    replace_file,
)

MAX_PIDFILE_BYTES = 64


class PidfileError(Exception):
    """The pidfile names a process that is still running, or cannot be used safely."""


def check_pidfile(path: str, user: ServiceUser) -> None:
    """Refuse a pidfile that names another live process (circusd does too), or an unsafe path.

    Called before daemonizing too, so that the command an operator typed fails
    with status 1 instead of a detached child failing where nobody sees it.
    """
    other = _read_pid(path, user)
    if other and other != os.getpid() and _alive(other):
        command = _command_line(other)
        if command is not None and _is_chapiteau(command):
            raise PidfileError(
                f"chapiteau is already running with pid {other} (pid file {path}): "
                f"stop it first (kill {other})"
            )
        if command is None:
            raise PidfileError(
                f"pid file {path} names pid {other}, which is running (its command line cannot "
                f"be read): stop it, or remove the file if it is not chapiteau"
            )
        raise PidfileError(
            f"pid file {path} names pid {other}, a running {' '.join(command[:2])!r}, not "
            f"chapiteau: remove the file if it is left over, or choose another --pidfile"
        )


def write_pidfile(path: str, user: ServiceUser) -> None:
    """Write our pid to ``path`` (exclusive temporary file, then rename); refuse a live other."""
    check_pidfile(path, user)
    try:
        replace_file(path, f"{os.getpid()}\n".encode(), user)
    except UnsafePathError as exc:
        raise PidfileError(f"pid file: {exc}") from None


def remove_pidfile(path: str, user: ServiceUser) -> None:
    """Remove ``path`` if it still holds our pid; never raises."""
    with contextlib.suppress(OSError, UnsafePathError):
        directory, name = open_parent(path, user)
        with directory:
            found = directory.read(name, MAX_PIDFILE_BYTES)
            if found is not None and _parse(found[0]) == os.getpid():
                Entry.of(directory, name, found[1]).remove()


def _read_pid(path: str, user: ServiceUser) -> int:
    try:
        data = read_small_file(path, user, MAX_PIDFILE_BYTES)
    except UnsafePathError as exc:
        raise PidfileError(f"pid file: {exc}") from None
    except OSError as exc:
        raise PidfileError(f"pid file {path}: {exc.strerror or exc}") from None
    return _parse(data or b"")


def _parse(data: bytes) -> int:
    try:
        return int(data.strip() or 0)
    except ValueError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> list[str] | None:
    """The command line of ``pid``, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return None
    return [os.fsdecode(word) for word in words if word] or None


def _is_chapiteau(command: list[str]) -> bool:
    """True for ``chapiteau ...`` and ``python -m chapiteau.broker ...``."""
    return any(
        os.path.basename(word) == "chapiteau" or word == "chapiteau.broker" for word in command[:3]
    )
