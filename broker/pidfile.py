"""Write, check and remove the pidfile of the broker (the process an operator signals)."""

from __future__ import annotations

import contextlib
import os


class PidfileError(Exception):
    """The pidfile names a process that is still running."""


def check_pidfile(path: str) -> None:
    """Refuse a pidfile that names another live process, as circusd does.

    Called before daemonizing too, so that the command an operator typed fails
    with status 1 instead of a detached child failing where nobody sees it.
    """
    try:
        with open(path) as existing:
            other = int(existing.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        other = 0
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


def write_pidfile(path: str) -> None:
    """Write our pid to ``path``; refuse when it names another live process."""
    check_pidfile(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    """Remove ``path`` if it still holds our pid."""
    with contextlib.suppress(OSError, ValueError), open(path) as current:
        if int(current.read().strip()) == os.getpid():
            os.unlink(path)


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
