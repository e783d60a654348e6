"""Fork and exec one worker process.

Theory of operation. `spawn` turns a `SpawnSpec` into a `_Plan` in the parent:
everything that can be validated, encoded, looked up (supplementary groups, the
PATH candidates for the program) or decided (which fds go where, which ranges to
close) is done there, so that the forked child only runs a short, fixed list of
``os.*`` calls and then ``execve``. The child reports any failure through a
close-on-exec pipe as ``step:errno:arg`` and exits with 127; EOF without data
means ``execve`` succeeded. The parent reaps a failed child before raising
`SpawnError`, so a failed spawn never leaves a zombie.

Order in the child (Circus's, with its gaps fixed): signal dispositions
back to default, fds into place and every other fd closed, a process group of
its own, rlimits, setgid, supplementary groups, setuid (each checked), umask,
chdir, environment (LISTEN_PID is the child's own pid), signal mask emptied, exec.

A process group, not a session: the group is what stopping a worker's tree
signals (``killpg``), and a worker that is not a session leader can never
acquire a controlling terminal (the supervisor's session, started by the
broker, has none). A session per worker (``setsid``, as Circus does) would also
put each worker in a scheduling group of its own wherever the kernel's
autogroups are on (``/proc/sys/kernel/sched_autogroup_enabled``, Debian's
default): CPU time is then shared among sessions, not processes, and 2 bjoern
workers served 0.80x to 0.95x of what the same 2 processes serve from one
session (docs/benchmarks.md). Sharing the supervisor's session, the workers
share one scheduling group, as a pre-fork server's workers do.

Supplementary groups: with ``uid`` and ``user_name`` set, the groups are those of
``os.getgrouplist(user_name, gid)`` (initgroups semantics, computed in the parent
so that the child never runs an NSS lookup); with ``uid`` but no ``user_name``
they are just the target gid; with only ``gid`` they are ``[gid]``, so a worker
never keeps the supervisor's supplementary groups (Circus's workers do). An id
switch that would change nothing is skipped (groups included), so an
unprivileged supervisor can name its own uid/gid without EPERM.

Call `spawn` from the thread that runs the event loop and register the pid with
the `ChildWatcher` before yielding to the loop: its SIGCHLD pass reaps every
child it does not know.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import gc
import os
import resource
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from chapiteau.protocol.options import RLIMITS

# OFILE is the BSD alias of NOFILE; users know the latter.
_RLIMIT_NAMES = {number: f"RLIMIT_{name}" for name, number in RLIMITS.items() if name != "OFILE"}

# SIGKILL and SIGSTOP cannot be caught or ignored, so they need no reset.
_RESETTABLE_SIGNALS = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))
_ALL_SIGNALS = signal.valid_signals()

# Marks "/dev/null" as the source of a child fd in a plan.
_DEVNULL = -1
_CHILD_FAILED = 127
_REPORT_MAX = 4096


class SpawnError(Exception):
    """A worker could not be started; str() is one line for the user.

    ``step`` names what failed (``fork``, ``signals``, ``dup2``, ``close``,
    ``setpgid``, ``rlimit``, ``setgid``, ``setgroups``, ``initgroups``,
    ``setuid``, ``chdir``, ``exec``, ``listen_fds``) and ``errno`` is the
    error number; ``detail`` says what the step was applied to.
    """

    def __init__(self, step: str, errno: int, detail: str = "") -> None:
        super().__init__(step, errno, detail)
        self.step = step
        self.errno = errno
        self.detail = detail

    def __str__(self) -> str:
        where = f"{self.step} {self.detail}" if self.detail else self.step
        return f"{where}: [Errno {self.errno}] {os.strerror(self.errno)}"


@dataclass(frozen=True)
class SpawnSpec:
    """Everything needed to start one worker; parent fds are borrowed, not closed."""

    # argv[0] is the program, searched on the PATH of ``env`` unless it has a "/".
    argv: tuple[str, ...]
    # The child's whole environment.
    env: Mapping[str, str]
    # Run this file instead of argv[0], keeping argv (Circus ``executable``).
    executable: str | None = None
    # chdir after the id switch, so access is checked as the worker's user.
    working_dir: str | None = None
    # Ids to switch to; see the module docstring for supplementary groups.
    uid: int | None = None
    gid: int | None = None
    user_name: str | None = None
    umask: int | None = None
    # resource.RLIMIT_* -> (soft, hard), set before the id switch.
    rlimits: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    # Child fd (>= 3) -> parent fd to place there; only these and 0-2 survive.
    fds: Mapping[int, int] = field(default_factory=dict)
    # Parent fd for child fd 0; None means /dev/null.
    stdin: int | None = None
    # Parent fds for child fds 1 and 2; None means the supervisor's own.
    stdout: int | None = None
    stderr: int | None = None
    # Send fd 1 / fd 2 to /dev/null (Circus close_child_stdout/stderr).
    close_stdout: bool = False
    close_stderr: bool = False
    # systemd protocol: socket names of fds 3.. (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID).
    listen_fds_names: tuple[str, ...] | None = None
    # Environment variables set to the child's own pid after the fork (WATCHDOG_PID).
    own_pid_variables: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """What the child does, precomputed in the parent so the child stays tiny."""

    argv: tuple[bytes, ...]
    env: dict[bytes, bytes]
    candidates: tuple[bytes, ...]
    dups: tuple[tuple[int, int], ...]  # (child fd, parent fd or _DEVNULL)
    high: int  # first fd number above every target
    keep_below_high: frozenset[int]
    max_fd: int
    rlimits: tuple[tuple[int, int, int], ...]
    gid: int | None
    groups: tuple[int, ...] | None
    groups_step: str
    uid: int | None
    umask: int | None
    working_dir: bytes | None
    own_pid_variables: tuple[bytes, ...]
    """LISTEN_PID, WATCHDOG_PID: set to the child's pid in the child."""


def spawn(spec: SpawnSpec) -> int:
    """Start the worker described by ``spec`` and return its pid once exec succeeded.

    Raises `SpawnError` if anything failed in the parent or the child (the
    child is then already reaped), and ValueError for a malformed spec.
    """
    plan = _make_plan(spec)
    if _needs_no_fork(plan):
        return _posix_spawn(plan, spec)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _fork_with_devnull(plan, write_end)
        finally:
            os.close(write_end)
        report = _read_report(read_end)
    finally:
        os.close(read_end)
    if not report:
        return pid
    _reap(pid)
    raise _error_from_report(report, spec, plan)


def _needs_no_fork(plan: _Plan) -> bool:
    """Whether posix_spawn (vfork: no copy of the supervisor's memory) can do it all.

    It can place fds, reset signals and start a process group, but not switch ids,
    set rlimits, a umask or a directory, nor set LISTEN_PID or WATCHDOG_PID; and it cannot close
    fds, so the fast path is taken only while no fd of the supervisor beyond
    stdio would be inherited (see `trust_own_fds`).
    """
    if plan.own_pid_variables or plan.rlimits or plan.umask is not None or plan.working_dir:
        return False
    if plan.uid is not None or plan.gid is not None or plan.groups is not None:
        return False
    return _FDS.trusted or not _inheritable_fds()


def _inheritable_fds() -> bool:
    """Whether this process has an inheritable fd beyond stdio (a listing of all its fds)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if fd > 2 and os.get_inheritable(fd):
                return True
    return False


class _FdTrust:
    """Whether every fd of this process is known to be close-on-exec, so that a spawn
    need not list them: listing costs one step per open fd, and the supervisor holds
    one pidfd per worker, so starting n workers cost O(n²)."""

    __slots__ = ("trusted", "user_code")

    def __init__(self) -> None:
        self.trusted = False
        self.user_code = False


_FDS = _FdTrust()


def trust_own_fds() -> None:
    """Stop listing fds before each posix_spawn, if no fd beyond stdio is inheritable now.

    For the supervisor, once set up: every fd it opens later is close-on-exec
    (Python's default, fds received with MSG_CMSG_CLOEXEC, pidfds, libzmq's).
    Not after `user_code_loaded`: hook code may open an inheritable fd at any
    time, so every spawn then lists the fds again.
    """
    _FDS.trusted = not _FDS.user_code and not _inheritable_fds()


def user_code_loaded() -> None:
    """Say that user code (a hook, a stream class) was imported into this process:
    from now on, for the life of the process, each spawn lists the fds again."""
    _FDS.user_code = True
    _FDS.trusted = False


def _posix_spawn(plan: _Plan, spec: SpawnSpec) -> int:
    """The same worker as `_fork` starts, by posix_spawn: sources are first moved above
    every fd in play, so placing one can never clobber another."""
    actions: list[tuple] = []
    moves: list[tuple[int, int]] = []
    base = max(fd for pair in plan.dups for fd in pair) + 1
    for index, (target, source) in enumerate(plan.dups):
        if source == _DEVNULL:
            continue
        actions.append((os.POSIX_SPAWN_DUP2, source, base + index))
        moves.append((base + index, target))
    for target, source in plan.dups:
        if source == _DEVNULL:
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
    actions.extend((os.POSIX_SPAWN_DUP2, moved, target) for moved, target in moves)
    actions.extend((os.POSIX_SPAWN_CLOSE, moved) for moved, _ in moves)
    codes: list[int] = []
    for path in plan.candidates:
        missing = _missing(path)
        if missing is not None:
            codes.append(missing)
            continue
        try:
            return os.posix_spawn(
                path,
                plan.argv,
                plan.env,
                file_actions=actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=_RESETTABLE_SIGNALS,
            )
        except OSError as exc:
            code = exc.errno or errno_codes.EINVAL
            if code == errno_codes.EAGAIN:
                # Without an id switch, exec never says EAGAIN: the clone was refused.
                raise SpawnError("fork", code) from exc
            codes.append(code)
    code, index = _exec_error(codes)
    raise _spawn_error("exec", code, index, spec, plan)


def _missing(path: bytes) -> int | None:
    """ENOENT or ENOTDIR if ``path`` names nothing, as exec would say; else None.

    Each exec that posix_spawn tries costs a clone (a copy of the supervisor's fd
    table, the signal resets) and a wait for the failed child: a PATH search tried
    every directory before the program's that way, two clones a spawn for ``sleep``
    on the default PATH. The parent and the child have the same ids on this path, so
    what the parent sees missing the child would too.
    """
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in (errno_codes.ENOENT, errno_codes.ENOTDIR):
            return exc.errno
    return None


def _fork_with_devnull(plan: _Plan, write_end: int) -> int:
    if all(source != _DEVNULL for _, source in plan.dups):
        return _fork(plan, write_end, -1)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return _fork(plan, write_end, devnull)
    finally:
        os.close(devnull)


def _fork(plan: _Plan, write_end: int, devnull: int) -> int:
    # No collection in the child: a finalizer closing a file object could close
    # an fd number that has just been dup2'd into place. Signals stay blocked
    # across fork so no Python handler runs in the child before the reset.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            _child(plan, write_end, devnull)
    except OSError as exc:
        raise SpawnError("fork", exc.errno or errno_codes.EAGAIN) from exc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if gc_was_enabled:
            gc.enable()
    return pid


class _Progress:
    """The step the child is at, and its argument: what the report names if the step fails."""

    __slots__ = ("arg", "step")

    def __init__(self) -> None:
        self.step, self.arg = "signals", 0

    def at(self, step: str, arg: int = 0) -> None:
        self.step, self.arg = step, arg


def _child(plan: _Plan, report_fd: int, devnull: int) -> NoReturn:
    progress = _Progress()
    try:
        signal.set_wakeup_fd(-1)
        for signum in _RESETTABLE_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        progress.at("dup2")
        # The report pipe first moves above all targets, so no dup2 can clobber it.
        report_fd = fcntl.fcntl(report_fd, fcntl.F_DUPFD_CLOEXEC, plan.high)
        _place_fds(plan, devnull, progress)
        progress.at("close")
        _close_other_fds(plan, report_fd)
        progress.at("setpgid")
        os.setpgid(0, 0)
        _set_rlimits(plan, progress)
        _switch_ids(plan, progress)
        if plan.umask is not None:
            os.umask(plan.umask)
        if plan.working_dir is not None:
            progress.at("chdir")
            os.chdir(plan.working_dir)
        progress.at("exec")
        _exec(plan, progress)
    # The child must never return into the parent's code, whatever happened.
    except BaseException as exc:
        code = getattr(exc, "errno", None) or errno_codes.EINVAL
        with contextlib.suppress(OSError):
            os.write(report_fd, b"%s:%d:%d" % (progress.step.encode(), code, progress.arg))
    finally:
        os._exit(_CHILD_FAILED)


def _place_fds(plan: _Plan, devnull: int, progress: _Progress) -> None:
    # Every source first moves above all targets, so a dup2 onto a target can
    # never clobber a source still to be placed.
    moved = []
    for target, source in plan.dups:
        fd = devnull if source == _DEVNULL else source
        moved.append((target, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, plan.high)))
    for target, fd in moved:
        progress.at("dup2", target)
        os.dup2(fd, target)


def _close_other_fds(plan: _Plan, report_fd: int) -> None:
    low = 3
    for fd in sorted(plan.keep_below_high):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, report_fd)
    os.closerange(report_fd + 1, plan.max_fd)


def _set_rlimits(plan: _Plan, progress: _Progress) -> None:
    for res, soft, hard in plan.rlimits:
        progress.at("rlimit", res)
        try:
            resource.setrlimit(res, (soft, hard))
        except ValueError:
            raise OSError(_rlimit_errno(soft, hard), "setrlimit") from None


def _switch_ids(plan: _Plan, progress: _Progress) -> None:
    if plan.gid is not None:
        progress.at("setgid", plan.gid)
        os.setgid(plan.gid)
        if os.getresgid() != (plan.gid, plan.gid, plan.gid):
            raise OSError(errno_codes.EPERM, "setgid")
    if plan.groups is not None:
        progress.at(plan.groups_step)
        os.setgroups(plan.groups)
    if plan.uid is not None:
        progress.at("setuid", plan.uid)
        os.setuid(plan.uid)
        if os.getresuid() != (plan.uid, plan.uid, plan.uid):
            raise OSError(errno_codes.EPERM, "setuid")


def _exec(plan: _Plan, progress: _Progress) -> NoReturn:
    env = plan.env
    for variable in plan.own_pid_variables:
        env[variable] = b"%d" % os.getpid()
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    codes: list[int] = []
    for path in plan.candidates:
        try:
            os.execve(path, plan.argv, env)
        except OSError as exc:
            codes.append(exc.errno or errno_codes.EINVAL)
    code, progress.arg = _exec_error(codes)
    raise OSError(code, "execve")


def _exec_error(codes: list[int]) -> tuple[int, int]:
    """execvp's choice among the errnos of the exec candidates, as (errno, candidate index):
    the first one that is not "not here" (ENOENT, ENOTDIR), else ENOENT on the last one."""
    for index, code in enumerate(codes):
        if code not in (errno_codes.ENOENT, errno_codes.ENOTDIR):
            return code, index
    return errno_codes.ENOENT, len(codes) - 1


def _rlimit_errno(soft: int, hard: int) -> int:
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        return errno_codes.EINVAL
    return errno_codes.EPERM


def _read_report(read_end: int) -> bytes:
    chunks = []
    while chunk := os.read(read_end, _REPORT_MAX):
        chunks.append(chunk)
    return b"".join(chunks)


def _reap(pid: int) -> None:
    # ECHILD: reaped already by someone else's waitpid(-1); nothing is left behind.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _error_from_report(report: bytes, spec: SpawnSpec, plan: _Plan) -> SpawnError:
    step_bytes, code_bytes, arg_bytes = report.split(b":")
    return _spawn_error(step_bytes.decode(), int(code_bytes), int(arg_bytes), spec, plan)


def _spawn_error(step: str, code: int, arg: int, spec: SpawnSpec, plan: _Plan) -> SpawnError:
    if step == "exec":
        program = spec.executable or spec.argv[0]
        if code == errno_codes.ENOENT and len(plan.candidates) > 1:
            detail = f"{program} (searched PATH={spec.env.get('PATH', os.defpath)})"
        else:
            detail = os.fsdecode(plan.candidates[arg])
    elif step == "rlimit":
        soft, hard = spec.rlimits[arg]
        detail = f"{_RLIMIT_NAMES.get(arg, arg)}=({soft}, {hard})"
    elif step == "dup2":
        detail = f"fd {arg}"
    elif step in ("setuid", "setgid"):
        detail = f"{step[3:]} {arg}"
    elif step in ("setgroups", "initgroups"):
        detail = f"groups {list(plan.groups or ())}"
    elif step == "chdir":
        detail = str(spec.working_dir)
    else:
        detail = ""
    return SpawnError(step, code, detail)


def _make_plan(spec: SpawnSpec) -> _Plan:
    _check_spec(spec)
    env = _plan_env(spec)
    argv = tuple(os.fsencode(arg) for arg in spec.argv)
    if any(b"\0" in arg for arg in argv):
        raise SpawnError("exec", errno_codes.EINVAL, f"argument list {list(spec.argv)}")
    targets = {0, 1, 2, *spec.fds}
    high = max(targets) + 1
    uid, gid, groups, groups_step = _plan_groups(spec)
    return _Plan(
        argv=argv,
        env=env,
        candidates=_exec_candidates(spec.executable or spec.argv[0], spec.env),
        dups=_plan_dups(spec),
        high=high,
        keep_below_high=frozenset(fd for fd in targets if fd >= 3),
        max_fd=max(os.sysconf("SC_OPEN_MAX"), high + 1),
        rlimits=tuple((res, soft, hard) for res, (soft, hard) in sorted(spec.rlimits.items())),
        gid=gid,
        groups=groups,
        groups_step=groups_step,
        uid=uid,
        umask=spec.umask,
        working_dir=None if spec.working_dir is None else os.fsencode(spec.working_dir),
        own_pid_variables=(
            *((b"LISTEN_PID",) if spec.listen_fds_names is not None else ()),
            *map(os.fsencode, spec.own_pid_variables),
        ),
    )


def _check_spec(spec: SpawnSpec) -> None:
    """ValueError for a spec no caller should build (a programming error)."""
    if not spec.argv:
        raise ValueError("SpawnSpec.argv must name the program")
    if any(target < 3 for target in spec.fds):
        raise ValueError("SpawnSpec.fds targets must be >= 3; use stdin/stdout/stderr")
    unknown = set(spec.rlimits) - set(_RLIMIT_NAMES)
    if unknown:
        raise ValueError(f"unknown rlimit resources {sorted(unknown)}")
    names = spec.listen_fds_names or ()
    missing = set(range(3, 3 + len(names))) - set(spec.fds)
    if missing:
        raise ValueError(f"listen_fds_names needs fds {sorted(missing)} in SpawnSpec.fds")


def _plan_env(spec: SpawnSpec) -> dict[bytes, bytes]:
    """The child's environment as bytes, with the systemd socket variables but LISTEN_PID."""
    env = {os.fsencode(key): os.fsencode(value) for key, value in spec.env.items()}
    for key, value in env.items():
        if not key or b"=" in key or b"\0" in key or b"\0" in value:
            raise SpawnError("exec", errno_codes.EINVAL, f"environment variable {key!r}")
    names = spec.listen_fds_names
    if names is not None:
        if any(":" in name for name in names):
            raise SpawnError("listen_fds", errno_codes.EINVAL, f"socket names {list(names)} (':')")
        env[b"LISTEN_FDS"] = b"%d" % len(names)
        env[b"LISTEN_FDNAMES"] = os.fsencode(":".join(names))
    return env


def _plan_dups(spec: SpawnSpec) -> tuple[tuple[int, int], ...]:
    """(child fd, parent fd or _DEVNULL) for stdio and the declared fds."""
    dups: list[tuple[int, int]] = [(0, _DEVNULL if spec.stdin is None else spec.stdin)]
    for target, source, close in (
        (1, spec.stdout, spec.close_stdout),
        (2, spec.stderr, spec.close_stderr),
    ):
        if close:
            dups.append((target, _DEVNULL))
        elif source is not None:
            dups.append((target, source))
    dups.extend(sorted(spec.fds.items()))
    return tuple(dups)


def _plan_groups(spec: SpawnSpec) -> tuple[int | None, int | None, tuple[int, ...] | None, str]:
    """Return (uid, gid, supplementary groups, step name) to set; None = leave alone.

    Nothing is touched unless the uid or gid really changes, so that an
    unprivileged supervisor may name its own identity.
    """
    uid = None if spec.uid is None or os.getresuid() == (spec.uid,) * 3 else spec.uid
    gid = None if spec.gid is None or os.getresgid() == (spec.gid,) * 3 else spec.gid
    if uid is None and gid is None:
        return None, None, None, "setgroups"
    base = os.getgid() if spec.gid is None else spec.gid
    if spec.uid is not None and spec.user_name is not None:
        wanted, step = os.getgrouplist(spec.user_name, base), "initgroups"
    else:
        wanted, step = [base], "setgroups"
    groups = None if set(wanted) == set(os.getgroups()) else tuple(sorted(set(wanted)))
    return uid, gid, groups, step


def _exec_candidates(program: str, env: Mapping[str, str]) -> tuple[bytes, ...]:
    """Paths execve tries, in order: execvpe's PATH search, taken from the child's env."""
    if os.sep in program:
        # A relative path is resolved by execve after chdir, as Popen(cwd=...) does.
        return (os.fsencode(program),)
    return tuple(
        os.fsencode(os.path.join(directory or ".", program))
        for directory in os.get_exec_path(dict(env))
    )
