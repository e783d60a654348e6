"""Tests for chapiteau.supervisor.children.spawn: real forks, real execs, checked through /proc."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chapiteau.supervisor.children import spawn as spawn_module
from chapiteau.supervisor.children.spawn import (
    SpawnError,
    SpawnSpec,
    spawn,
    trust_own_fds,
    user_code_loaded,
)

PATH = {"PATH": "/usr/bin:/bin"}
NOBODY = 65534
TIMEOUT = 5.0


def zombie_children() -> list[int]:
    """Pids of this process's children that are zombies."""
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile: ENOENT, or ESRCH while it exits
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry))
    return zombies


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def wait_sleeping(pid: int) -> None:
    """Wait until ``pid`` blocks (past the dynamic loader, which opens transient fds)."""
    deadline = time.monotonic() + TIMEOUT
    while proc_status(pid)["State"][0] != "S":
        assert time.monotonic() < deadline, f"pid {pid} never went to sleep"
        time.sleep(0.001)


def wait_exit(pid: int) -> int:
    """Reap ``pid`` within TIMEOUT and return its exit code."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.001)


def child_fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def fd_target(pid: int | str, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


FORKS: list[int] = []
"""One entry per os.fork() of this process (posix_spawn runs no at-fork hook)."""
os.register_at_fork(after_in_parent=lambda: FORKS.append(1))


@pytest.fixture(autouse=True, params=["posix_spawn", "fork"])
def spawn_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run each test on both ways of starting a worker, whatever fds pytest inherited.

    The fast path is taken only while no stray fd is inheritable: for it, the
    inherited ones are made non-inheritable for the test; for the other, one
    inheritable fd (that no worker may get) rules posix_spawn out.
    """
    if request.param == "fork":
        stray = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(stray, True)
        try:
            yield request.param
        finally:
            os.close(stray)
        return
    stray_fds = inheritable_fds()
    for fd in stray_fds:
        os.set_inheritable(fd, False)
    try:
        yield request.param
    finally:
        for fd in stray_fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, True)


def inheritable_fds() -> list[int]:
    """This process's inheritable fds beyond stdio."""
    found = []
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
    return found


@pytest.fixture
def children() -> Iterator[list[int]]:
    """Pids to SIGKILL and reap after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def run_output(spec: SpawnSpec, pipe: tuple[int, int]) -> tuple[int, str]:
    """Spawn with stdout on ``pipe``, return (pid, everything written) once the child exited."""
    read_end, write_end = pipe
    pid = spawn(SpawnSpec(**{**spec.__dict__, "stdout": write_end}))
    os.close(write_end)
    assert wait_exit(pid) == 0
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    return pid, b"".join(chunks).decode()


def sleeper(**options: object) -> SpawnSpec:
    return SpawnSpec(argv=("sleep", "30"), env=PATH, **options)  # type: ignore[arg-type]


def test_spawn_returns_the_pid_of_the_running_program(children: list[int]) -> None:
    pid = spawn(sleeper())
    children.append(pid)
    assert os.readlink(f"/proc/{pid}/exe") == "/usr/bin/sleep"


def test_program_is_found_on_the_path_of_the_child_environment(pipe: tuple[int, int]) -> None:
    _, out = run_output(SpawnSpec(argv=("echo", "hi"), env={"PATH": "/nonexistent:/bin"}), pipe)
    assert out == "hi\n"


def test_child_gets_exactly_the_given_environment(pipe: tuple[int, int]) -> None:
    _, out = run_output(SpawnSpec(argv=("/usr/bin/env",), env={"A": "1", "B": "x y"}), pipe)
    assert sorted(out.splitlines()) == ["A=1", "B=x y"]


def test_executable_is_run_with_argv_zero_kept(pipe: tuple[int, int]) -> None:
    spec = SpawnSpec(argv=("renamed", "-c", "echo $0"), env={}, executable="/bin/sh")
    assert run_output(spec, pipe)[1] == "renamed\n"


def test_relative_program_is_resolved_in_the_working_dir(tmp_path, pipe) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    spec = SpawnSpec(argv=("./run.sh",), env={}, working_dir=str(tmp_path))
    assert run_output(spec, pipe)[1] == "ran\n"


def test_umask_and_working_dir_are_applied(tmp_path, pipe: tuple[int, int]) -> None:
    spec = SpawnSpec(
        argv=("sh", "-c", "umask; pwd"), env=PATH, umask=0o027, working_dir=str(tmp_path)
    )
    assert run_output(spec, pipe)[1] == f"0027\n{tmp_path}\n"


def test_rlimits_are_applied(children: list[int]) -> None:
    pid = spawn(sleeper(rlimits={resource.RLIMIT_NOFILE: (100, 200)}))
    children.append(pid)
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert line.split()[3:5] == ["100", "200"]


def test_worker_leads_its_own_process_group_in_the_supervisor_session(
    children: list[int],
) -> None:
    pid = spawn(sleeper())
    children.append(pid)
    assert (os.getpgid(pid), os.getsid(pid)) == (pid, os.getsid(0))


def autogroup(pid: int | str) -> str:
    """The scheduler autogroup of ``pid``, e.g. "/autogroup-42" (one per session).

    Empty when autogroups do not apply: the kernel has none, or the task sits in a
    CPU cgroup of its own (a container, a systemd slice), where the cgroup decides.
    """
    try:
        with open(f"/proc/{pid}/autogroup") as entry:
            return entry.read().partition(" ")[0]
    except FileNotFoundError:
        return ""


@pytest.mark.skipif(not autogroup("self"), reason="scheduler autogroups do not apply here")
def test_worker_shares_the_supervisor_scheduling_group(children: list[int]) -> None:
    # With autogroups on, CPU time is shared among these groups, not among processes:
    # a worker in a group of its own competes with its siblings and the load it serves
    # as if it were a whole other program.
    pid = spawn(sleeper())
    children.append(pid)
    assert autogroup(pid) == autogroup(os.getpid())


def test_signal_dispositions_and_mask_start_clean(children: list[int]) -> None:
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own default
        pid = spawn(sleeper())
        children.append(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, previous)
    status = proc_status(pid)
    # glibc reserves signals 32 and 33 (not settable from Python); whatever the
    # test runner inherited for those is out of scope.
    settable = sum(1 << (signum - 1) for signum in signal.valid_signals())
    ignored, blocked = int(status["SigIgn"], 16), int(status["SigBlk"], 16)
    assert (ignored & settable, blocked & settable) == (0, 0)


def test_stdin_defaults_to_dev_null_and_stdout_is_inherited(children: list[int]) -> None:
    pid = spawn(sleeper())
    children.append(pid)
    assert fd_target(pid, 0) == "/dev/null"
    assert fd_target(pid, 1) == fd_target("self", 1)


def test_close_stdout_and_stderr_point_them_at_dev_null(children: list[int]) -> None:
    pid = spawn(sleeper(close_stdout=True, close_stderr=True))
    children.append(pid)
    assert (fd_target(pid, 1), fd_target(pid, 2)) == ("/dev/null", "/dev/null")


def test_only_stdio_and_declared_fds_reach_the_worker(children: list[int]) -> None:
    leaky_read, leaky_write = os.pipe()
    leaky_socket = socket.socket()
    declared = socket.socket()
    for fd in (leaky_read, leaky_write, leaky_socket.fileno()):
        os.set_inheritable(fd, True)
    try:
        pid = spawn(sleeper(fds={7: declared.fileno()}))
        children.append(pid)
        wait_sleeping(pid)
        assert child_fds(pid) == {0, 1, 2, 7}
        assert fd_target(pid, 7) == fd_target("self", declared.fileno())
    finally:
        os.close(leaky_read)
        os.close(leaky_write)
        leaky_socket.close()
        declared.close()


def test_declared_fds_that_swap_numbers_land_in_the_right_place(children: list[int]) -> None:
    first, first_w = os.pipe()
    second, second_w = os.pipe()
    try:
        pid = spawn(sleeper(fds={first: second, second: first}))
        children.append(pid)
        assert fd_target(pid, first) == fd_target("self", second)
        assert fd_target(pid, second) == fd_target("self", first)
    finally:
        for fd in (first, first_w, second, second_w):
            os.close(fd)


# Parent fds live at fixed numbers so that the drawn mappings do not depend on
# which numbers the test process happens to have free.
SOURCES = (400, 401, 402, 403)
EXTRA_TARGETS = (404, 405, 3, 9)


@settings(max_examples=25, deadline=None)
@given(
    mapping=st.dictionaries(
        st.sampled_from(SOURCES + EXTRA_TARGETS), st.sampled_from(SOURCES), min_size=1
    )
)
def test_any_fd_mapping_places_every_source(mapping: dict[int, int]) -> None:
    for number in SOURCES:
        read_end, write_end = os.pipe()
        os.dup2(read_end if number % 2 else write_end, number)
        os.close(read_end)
        os.close(write_end)
    try:
        pid = spawn(sleeper(fds=mapping))
        try:
            wait_sleeping(pid)
            assert child_fds(pid) == {0, 1, 2, *mapping}
            for target, source in mapping.items():
                assert fd_target(pid, target) == fd_target("self", source)
        finally:
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid)
    finally:
        for number in SOURCES:
            os.close(number)


def test_systemd_protocol_sets_listen_pid_to_the_child_pid(pipe: tuple[int, int]) -> None:
    web, admin = socket.socket(), socket.socket()
    try:
        spec = SpawnSpec(
            argv=("sh", "-c", 'echo "$LISTEN_PID $LISTEN_FDS $LISTEN_FDNAMES"'),
            env=PATH,
            fds={3: web.fileno(), 4: admin.fileno()},
            listen_fds_names=("web", "admin"),
        )
        pid, out = run_output(spec, pipe)
    finally:
        web.close()
        admin.close()
    assert out == f"{pid} 2 web:admin\n"


def test_switches_to_nobody_with_its_groups(children: list[int]) -> None:
    pid = spawn(sleeper(uid=NOBODY, gid=NOBODY, user_name="nobody"))
    children.append(pid)
    status = proc_status(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    expected = sorted(os.getgrouplist("nobody", NOBODY))
    assert sorted(int(group) for group in status["Groups"].split()) == expected


def test_gid_alone_drops_the_supervisor_supplementary_groups(children: list[int]) -> None:
    groups = os.getgroups()
    os.setgroups([0, 4, 27])
    try:
        pid = spawn(sleeper(gid=NOBODY))
        children.append(pid)
    finally:
        os.setgroups(groups)
    status = proc_status(pid)
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].split() == [str(NOBODY)]
    assert status["Uid"].split() == ["0"] * 4


def spawn_failure(spec: SpawnSpec) -> SpawnError:
    with pytest.raises(SpawnError) as caught:
        spawn(spec)
    assert zombie_children() == []
    return caught.value


def test_missing_program_is_exec_enoent() -> None:
    error = spawn_failure(SpawnSpec(argv=("/usr/bin/nope",), env={}))
    assert (error.step, error.errno) == ("exec", errno.ENOENT)
    assert str(error) == "exec /usr/bin/nope: [Errno 2] No such file or directory"


def test_program_not_on_path_names_the_path_searched() -> None:
    error = spawn_failure(SpawnSpec(argv=("nope",), env=PATH))
    assert str(error) == (
        "exec nope (searched PATH=/usr/bin:/bin): [Errno 2] No such file or directory"
    )


def test_non_executable_program_is_exec_eacces(tmp_path) -> None:
    script = tmp_path / "plain.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    error = spawn_failure(SpawnSpec(argv=(str(script),), env={}))
    assert (error.step, error.errno, error.detail) == ("exec", errno.EACCES, str(script))


def test_non_executable_file_on_path_beats_a_later_miss(tmp_path) -> None:
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    error = spawn_failure(SpawnSpec(argv=("tool",), env={"PATH": f"{tmp_path}:/nonexistent"}))
    assert (error.errno, error.detail) == (errno.EACCES, str(tmp_path / "tool"))


def test_soft_rlimit_above_hard_is_rlimit_einval() -> None:
    error = spawn_failure(sleeper(rlimits={resource.RLIMIT_NOFILE: (10, 5)}))
    assert (error.step, error.errno) == ("rlimit", errno.EINVAL)
    assert error.detail == "RLIMIT_NOFILE=(10, 5)"


def test_a_failed_rlimit_names_the_resource_not_its_bsd_alias() -> None:
    error = spawn_failure(sleeper(rlimits={resource.RLIMIT_OFILE: (10, 5)}))
    assert error.detail == "RLIMIT_NOFILE=(10, 5)"


def test_a_resource_setrlimit_does_not_know_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"unknown rlimit resources \[-1\]"):
        spawn(sleeper(rlimits={-1: (1, 1)}))


def test_rlimit_beyond_the_kernel_maximum_is_rlimit_eperm() -> None:
    error = spawn_failure(sleeper(rlimits={resource.RLIMIT_NOFILE: (2**30, 2**30)}))
    assert (error.step, error.errno) == ("rlimit", errno.EPERM)


def test_missing_working_dir_is_chdir_enoent() -> None:
    error = spawn_failure(sleeper(working_dir="/nonexistent"))
    assert (error.step, error.errno, str(error)) == (
        "chdir",
        errno.ENOENT,
        "chdir /nonexistent: [Errno 2] No such file or directory",
    )


def test_working_dir_the_target_user_cannot_enter_is_chdir_eacces(tmp_path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    error = spawn_failure(sleeper(uid=NOBODY, gid=NOBODY, working_dir=str(private)))
    assert (error.step, error.errno) == ("chdir", errno.EACCES)


def in_unprivileged_helper(spec: SpawnSpec, max_processes: int | None = None) -> tuple[str, int]:
    """Run spawn(spec) in a forked helper that first became nobody; return (step, errno).

    ``max_processes`` sets the helper's RLIMIT_NPROC before it drops root.
    """
    read_end, write_end = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(read_end)
            if max_processes is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
            os.setgroups([NOBODY])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                os.waitpid(spawn(spec), 0)
                os.write(write_end, b"ok:0")
            except SpawnError as error:
                if zombie_children():
                    os.write(write_end, b"zombie:0")
                else:
                    os.write(write_end, f"{error.step}:{error.errno}".encode())
        except BaseException as error:
            os.write(write_end, f"{error!r}:0".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        report = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
    assert wait_exit(helper) == 0
    step, code = report.rsplit(":", 1)
    return step, int(code)


def test_setuid_without_privilege_is_setuid_eperm() -> None:
    assert in_unprivileged_helper(sleeper(uid=0)) == ("setuid", errno.EPERM)


def test_setgid_without_privilege_is_setgid_eperm() -> None:
    assert in_unprivileged_helper(sleeper(gid=0)) == ("setgid", errno.EPERM)


def test_fork_refused_by_the_process_limit_is_fork_eagain() -> None:
    assert in_unprivileged_helper(sleeper(), max_processes=0) == ("fork", errno.EAGAIN)


def test_switching_to_the_current_user_needs_no_privilege() -> None:
    spec = SpawnSpec(argv=("/bin/true",), env={}, uid=NOBODY, gid=NOBODY)
    assert in_unprivileged_helper(spec) == ("ok", 0)


def test_colon_in_a_systemd_socket_name_is_refused_before_fork() -> None:
    with socket.socket() as web:
        spec = sleeper(fds={3: web.fileno()}, listen_fds_names=("a:b",))
        error = spawn_failure(spec)
    assert (error.step, error.errno) == ("listen_fds", errno.EINVAL)


def test_stdio_targets_in_fds_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="fds targets"):
        spawn(sleeper(fds={1: 1}))


@contextlib.contextmanager
def inheritable_fd() -> Iterator[None]:
    """An inheritable pipe end, that no worker may get, for the block."""
    leaky_read, leaky_write = os.pipe()
    os.set_inheritable(leaky_read, True)
    try:
        yield
    finally:
        os.close(leaky_read)
        os.close(leaky_write)


def forks_to_start(spec: SpawnSpec, children: list[int]) -> int:
    """How many times the supervisor forked to start ``spec``'s worker."""
    before = len(FORKS)
    children.append(spawn(spec))
    return len(FORKS) - before


@pytest.mark.parametrize("spawn_path", ["posix_spawn"], indirect=True)
def test_a_plain_worker_is_started_without_fork_only_while_no_fd_would_leak(
    children: list[int],
) -> None:
    assert forks_to_start(sleeper(), children) == 0
    assert forks_to_start(sleeper(umask=0o22), children) == 1
    with inheritable_fd():
        assert forks_to_start(sleeper(), children) == 1


@pytest.mark.parametrize("spawn_path", ["posix_spawn"], indirect=True)
def test_a_path_search_clones_once_not_once_per_directory_tried(
    children: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[bytes] = []
    real = os.posix_spawn

    def posix_spawn(path: bytes, *args: object, **kwargs: object) -> int:
        tried.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "posix_spawn", posix_spawn)
    env = {"PATH": "/nonexistent:/usr/bin/sleep:/usr/bin"}
    children.append(spawn(SpawnSpec(argv=("sleep", "30"), env=env)))
    assert tried == [b"/usr/bin/sleep"]


@pytest.fixture
def fd_trust(monkeypatch: pytest.MonkeyPatch) -> spawn_module._FdTrust:
    """A fresh trust in this process's fds, for the test only."""
    trust = spawn_module._FdTrust()
    monkeypatch.setattr(spawn_module, "_FDS", trust)
    return trust


@pytest.mark.parametrize("spawn_path", ["posix_spawn"], indirect=True)
def test_once_the_fds_are_trusted_a_spawn_does_not_list_them(
    children: list[int], fd_trust: spawn_module._FdTrust, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_own_fds()
    assert fd_trust.trusted

    def listed() -> bool:
        raise AssertionError("the fds were listed")

    monkeypatch.setattr(spawn_module, "_inheritable_fds", listed)
    assert forks_to_start(sleeper(), children) == 0


@pytest.mark.parametrize("spawn_path", ["posix_spawn"], indirect=True)
def test_fds_are_not_trusted_while_one_is_inheritable(fd_trust: spawn_module._FdTrust) -> None:
    with inheritable_fd():
        trust_own_fds()
    assert not fd_trust.trusted


@pytest.mark.parametrize("spawn_path", ["posix_spawn"], indirect=True)
def test_after_user_code_every_spawn_checks_the_fds_again(
    children: list[int], fd_trust: spawn_module._FdTrust
) -> None:
    trust_own_fds()
    user_code_loaded()
    trust_own_fds()
    assert not fd_trust.trusted
    with inheritable_fd():
        assert forks_to_start(sleeper(), children) == 1
