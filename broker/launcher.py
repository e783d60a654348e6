"""The launcher: a tiny unconfined process that starts the supervisor for the confined broker.

The broker confines itself for good (seccomp, Landlock, another uid), and
every child inherits that: a supervisor it forked could not run its workers.
So, while still root and before confining itself, the broker forks this
launcher. The launcher keeps uid 0 with only CAP_SETUID and CAP_SETGID, an
empty bounding set and no_new_privs, holds no other fd than its end of
a socketpair, and answers one request, "start the supervisor", with its pid.
It can only ever start a program as the service user fixed when it was
forked, never as root. (With ``[broker] user = root`` the supervisor is root
by request, and the launcher keeps root's privileges to start it so.) It
dies with the broker (parent-death signal, and EOF on its socket).

The supervisor stays the broker's child: the launcher double-forks, its
child execs the supervisor (setgroups, setgid, setuid, new session: the
standard library's fork_exec, each step checked) and exits at once, so the
supervisor is re-parented to the broker, the child subreaper. The launcher
replies once that intermediate child is gone, so the broker knows the pid
before it can reap the supervisor.

Wire format, one SEQPACKET record each way (the kernel keeps the record
boundary; a truncated record is refused): the request is a JSON object
``{"argv": [str, ...], "env": {str: str}, "fds": [int, ...]}`` with one fd
attached per number in ``fds``, the fd number that fd gets in the supervisor
(1 and 2 for its stdout and stderr, 3 and above for the others). The reply is
``{"pid": int}`` or ``{"error": str}``.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import socket
from collections.abc import Mapping, Sequence

import prctl

from chapiteau.broker.privileges import ServiceUser, running_as_root
from chapiteau.protocol.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from subprocess import Popen

MAX_REQUEST_BYTES = 256 * 1024
MAX_REPLY_BYTES = 4096
MAX_FDS = 8
MAX_FD_NUMBER = 1023
LAUNCHER_CAPABILITIES = (prctl.CAP_SETUID, prctl.CAP_SETGID)
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""A terminal's Ctrl-C and the operator's signals are the broker's to handle."""


class LaunchError(Exception):
    """The supervisor could not be started; the message says why."""


class Request(Record):
    """Start ``argv`` with ``env``; ``fds`` are the numbers the attached fds get in the child."""

    __slots__ = ("argv", "env", "fds")

    def __init__(self, argv: tuple[str, ...], env: dict[str, str], fds: tuple[int, ...]) -> None:
        self.argv = argv
        self.env = env
        self.fds = fds


def encode_request(request: Request) -> bytes:
    return json.dumps(
        {"argv": list(request.argv), "env": request.env, "fds": list(request.fds)}
    ).encode()


def decode_request(data: bytes, fd_count: int) -> Request:
    """The request in ``data``, which came with ``fd_count`` fds; ValueError if malformed."""
    document = json.loads(data.decode())
    if not isinstance(document, dict) or set(document) != {"argv", "env", "fds"}:
        raise ValueError("a request has exactly the keys argv, env and fds")
    argv, env, fds = document["argv"], document["env"], document["fds"]
    if not isinstance(argv, list) or not argv or not all(_is_text(word) for word in argv):
        raise ValueError("argv must be a non-empty list of strings without NUL")
    if not isinstance(env, dict) or not all(
        _is_text(key) and key and "=" not in key and _is_text(value) for key, value in env.items()
    ):
        raise ValueError("env must map names to strings")
    if (
        not isinstance(fds, list)
        or len(fds) != fd_count
        or len(set(fds)) != len(fds)
        or not all(type(fd) is int and 1 <= fd <= MAX_FD_NUMBER for fd in fds)
    ):
        raise ValueError(f"fds must list {fd_count} distinct fd numbers from 1 to {MAX_FD_NUMBER}")
    return Request(tuple(argv), env, tuple(fds))


def _is_text(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value


class Launcher:
    """The broker's handle on its launcher: ask for a supervisor, get its pid."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def start(self, argv: Sequence[str], env: Mapping[str, str], fds: Mapping[int, int]) -> int:
        """Start ``argv`` as the service user; ``fds`` maps child fd numbers to our fds.

        Blocks until the launcher answers: it is trusted and answers as soon as
        the exec succeeded or failed, as a fork+exec done here would.
        """
        request = Request(tuple(argv), dict(env), tuple(fds))
        ours = array.array("i", fds.values())
        try:
            self.sock.sendmsg(
                [encode_request(request)],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, ours)] if ours else [],
            )
            data = self.sock.recv(MAX_REPLY_BYTES)
        except OSError as exc:
            raise LaunchError(f"the launcher is unreachable: {exc.strerror or exc}") from None
        if not data:
            raise LaunchError("the launcher exited; restart chapiteau")
        try:
            reply = json.loads(data.decode())
        except ValueError:
            reply = None
        if isinstance(reply, dict) and type(reply.get("pid")) is int and reply["pid"] > 0:
            return reply["pid"]
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            raise LaunchError(reply["error"])
        raise LaunchError("the launcher sent an unreadable reply")

    def close(self) -> None:
        self.sock.close()


def fork_launcher(user: ServiceUser) -> Launcher:
    """Fork the launcher, which will start supervisors as ``user``; call it before confining."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            ours.close()
            _become_launcher(theirs.fileno(), parent, user)
            _serve(theirs, user)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    return Launcher(pid, ours)


def _become_launcher(keep_fd: int, parent: int, user: ServiceUser) -> None:
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)
    # What ps and pgrep show: not to be taken for the broker.
    prctl.set_name("chapiteau-launch")
    prctl.set_proctitle("chapiteau: launcher")
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # Nothing of the broker's: listening sockets, peers, the connect-mode listener.
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    if user.uid == 0:
        # [broker] user = root: the supervisor is as privileged as circusd, by request;
        # with fewer capabilities here it would get fewer (no_new_privs, bounding set).
        return
    if running_as_root():
        # An empty bounding set (the supervisor and workers inherit it): it only limits
        # what an exec may gain, not the two capabilities the launcher already holds.
        prctl.capbset.limit()
        prctl.cap_effective.limit(*LAUNCHER_CAPABILITIES)
        prctl.cap_permitted.limit(*LAUNCHER_CAPABILITIES)
        prctl.cap_inheritable.limit()
    prctl.set_no_new_privs(1)


def _serve(sock: socket.socket, user: ServiceUser) -> None:
    """Answer requests until the broker closes its end."""
    fd_space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                MAX_REQUEST_BYTES, fd_space, socket.MSG_CMSG_CLOEXEC
            )
        except InterruptedError:
            continue
        fds = _received_fds(ancillary)
        if not data:
            return
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("truncated request")
            reply = {"pid": _launch(decode_request(data, len(fds)), fds, user)}
        except (ValueError, LaunchError) as exc:
            reply = {"error": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(json.dumps(reply).encode()[:MAX_REPLY_BYTES])


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _launch(request: Request, fds: list[int], user: ServiceUser) -> int:
    """Double fork: the supervisor's parent exits at once, so the broker adopts it."""
    # Here, in the launcher, never in the broker: the broker runs no program, and
    # subprocess would stay in its memory for good (with threading and locale).
    import subprocess

    reader, writer = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(reader)
        # Out of the way of the fd numbers the supervisor's fds are put at.
        writer = fcntl.fcntl(writer, fcntl.F_DUPFD_CLOEXEC, _above(request))
        try:
            # Held until _exit: a collected Popen would reap (waitpid) a supervisor that
            # already exited, which must stay for the broker to reap.
            supervisor = _spawn(request, fds, user)
            message = str(supervisor.pid)
        except (OSError, subprocess.SubprocessError) as exc:
            message = f"error: cannot start the supervisor {request.argv[0]}: {exc}"
        os.write(writer, message.encode()[:MAX_REPLY_BYTES])
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as answer:
        text = answer.read(MAX_REPLY_BYTES).decode(errors="replace")
    os.waitpid(child, 0)
    if text.isdigit():
        return int(text)
    raise LaunchError(text.removeprefix("error: ") or "the supervisor's starter died")


def _above(request: Request) -> int:
    """The lowest fd number above every number the request places an fd at."""
    return max(request.fds, default=2) + 1


def _spawn(request: Request, fds: list[int], user: ServiceUser) -> Popen:
    """In the intermediate child: put each fd at its number, then fork and exec the supervisor."""
    import subprocess

    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # Above every target first, so that placing one never overwrites another.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _above(request)) for fd in fds]
    for source, target in zip(moved, request.fds, strict=True):
        os.dup2(source, target)
    credentials: dict = {}
    if running_as_root():
        credentials = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    return subprocess.Popen(
        list(request.argv),
        pass_fds=[fd for fd in request.fds if fd > 2],
        env=request.env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **credentials,
    )
