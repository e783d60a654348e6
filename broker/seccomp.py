"""seccomp: allow this process only the system calls the broker's loop makes, for good.

The filter is built with libseccomp (Debian's libseccomp2, through ctypes),
which resolves names to numbers for the running architecture and kills a
process that enters through another one (x32, int 0x80).

Two actions besides allow:

* ``KILLED``: the calls that would turn a compromised broker into something
  else (run a program, trace or debug another process, change credentials,
  mount, load a module or a BPF program, reboot...). Trying one kills the
  whole broker at once: there is nothing to probe.
* any other call not in ``ALLOWED`` fails with EPERM. The broker handles
  OSError on every path a peer can reach, so a call that a future Python or
  glibc makes where this list did not foresee it becomes a logged error,
  never the loss of every listening socket.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Iterable

# Measured with ``strace -f -c`` on the broker through reloads, connect mode,
# supervisor restarts, SIGTERM and logging (see docs/security.md).
ALLOWED = (
    # memory, threads (glibc, CPython)
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "futex",
    "rseq",
    "set_robust_list",
    "getrandom",
    # time and sleeping
    "clock_gettime",
    "clock_nanosleep",
    "gettimeofday",
    "nanosleep",
    # the event loop and signals
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "restart_syscall",
    # files (confined to a few directories by Landlock)
    "openat",
    "open",
    "close",
    "read",
    "pread64",
    "readv",
    "write",
    "writev",
    "lseek",
    "fstat",
    "newfstatat",
    "stat",
    "lstat",
    "statx",
    "fcntl",
    "ioctl",
    "dup",
    "dup3",
    "getdents64",
    "readlink",
    "readlinkat",
    "getcwd",
    "unlink",
    "unlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "umask",
    "pipe2",
    "memfd_create",
    # reading ACLs: broker/safe_paths.py checks who can write a directory on reload
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    # sockets: serve peers, bind on reload, resolve names
    "socket",
    "socketpair",
    "bind",
    "listen",
    "accept4",
    "connect",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "sendmmsg",
    "shutdown",
    # processes: wait for and signal the supervisor and orphaned workers
    "wait4",
    "waitid",
    "kill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "getpid",
    "gettid",
    "getppid",
    "getpgid",
    "getpgrp",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "uname",
    "sysinfo",
    "prlimit64",
    "getrlimit",
    "prctl",
    # confinement itself, put on after this filter: these only ever restrict further
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "sched_getaffinity",
    "sched_yield",
    "exit",
    "exit_group",
)
KILLED = (
    "execve",
    "execveat",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "capset",
    "chown",
    "fchown",
    "fchownat",
    "lchown",
    "mount",
    "umount2",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "io_uring_setup",
    "seccomp",
)

LIBRARY = "libseccomp.so.2"
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


class SeccompUnavailable(Exception):
    """libseccomp is not installed (Debian: apt-get install libseccomp2)."""


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError:
        raise SeccompUnavailable(
            f"{LIBRARY} is not installed (Debian: apt-get install libseccomp2)"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def syscall_number(name: str) -> int | None:
    """The number of system call ``name`` on this architecture; None if it has none."""
    number = _library().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


def install(allowed: Iterable[str] = ALLOWED, killed: Iterable[str] = KILLED) -> int:
    """Load the filter into this process (and every future child); return the rule count.

    Names this architecture does not have (``open`` on aarch64) are skipped.
    no_new_privs must already be set.
    """
    lib = _library()
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | errno.EPERM)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    rules = 0
    try:
        for action, names in ((SCMP_ACT_ALLOW, allowed), (SCMP_ACT_KILL_PROCESS, killed)):
            for name in names:
                number = syscall_number(name)
                if number is None:
                    continue
                result = lib.seccomp_rule_add(ctx, action, number, 0)
                if result < 0:
                    raise OSError(-result, f"seccomp_rule_add({name}): {errno.errorcode[-result]}")
                rules += 1
        result = lib.seccomp_load(ctx)
        if result < 0:
            raise OSError(-result, f"seccomp_load: {errno.errorcode[-result]}")
    finally:
        lib.seccomp_release(ctx)
    return rules
