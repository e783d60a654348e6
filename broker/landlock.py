"""Landlock: limit this process's filesystem access to a few directories, for good.

Landlock (Linux 5.13 and later) lets an unprivileged process give up access
rights: once ``restrict`` returns, any open, create or remove outside the
granted directories fails with EACCES, whatever the file modes and whatever
the process's uid or capabilities, and every child inherits the restriction.

Best effort across kernels: the rights the running kernel does not know (an
older ABI) are left out of both the handled set and the rules, which is what
the kernel documentation prescribes; on a kernel without Landlock, ``restrict``
returns None and the caller says so in its log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

from chapiteau.protocol.records import Record
from chapiteau.protocol.syscall import syscall

# <linux/landlock.h>, with the ABI version that introduced each right.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6

FS_RIGHTS_BY_ABI = {1: REFER - 1, 2: TRUNCATE - 1, 3: IOCTL_DEV - 1, 4: IOCTL_DEV - 1}
"""Every filesystem right each ABI knows (ABI 5 and later: all of the above)."""
ALL_FS_RIGHTS = (IOCTL_DEV << 1) - 1
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
"""The rights that apply to a file itself (a rule on a non-directory may grant only these)."""
READ = READ_FILE | READ_DIR

CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
"""landlock_create_ruleset, landlock_add_rule, landlock_restrict_self for each machine."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class Rule(Record):
    """Grant ``access`` to ``path`` and everything beneath it."""

    __slots__ = ("path", "access")

    def __init__(self, path: str, access: int) -> None:
        self.path = path
        self.access = access


class Restricted(Record):
    """What ``restrict`` enforced: the ABI version, the paths granted, the ones skipped."""

    __slots__ = ("abi", "granted", "missing", "unreachable")

    def __init__(
        self,
        abi: int,
        granted: tuple[str, ...],
        missing: tuple[str, ...],
        unreachable: tuple[str, ...],
    ) -> None:
        self.abi = abi
        self.granted = granted
        self.missing = missing
        # Paths this process cannot open (file modes): it could not use them anyway.
        self.unreachable = unreachable


def abi_version() -> int:
    """The Landlock ABI version the running kernel offers; 0 when it offers none."""
    numbers = SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return 0
    try:
        return syscall(
            numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION)
        )
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def restrict(rules: Iterable[Rule]) -> Restricted | None:
    """Allow only ``rules`` on the filesystem from now on; None without Landlock.

    Abstract unix sockets outside the domain are out of reach too (ABI 6).
    A rule whose path does not exist, or that this process cannot reach, is
    skipped (and listed in the result): leaving a rule out only takes access
    away. no_new_privs must already be
    set (or the process must have CAP_SYS_ADMIN).
    """
    abi = abi_version()
    if abi == 0:
        return None
    create, add_rule, restrict_self = SYSCALLS[os.uname().machine]
    known = FS_RIGHTS_BY_ABI.get(abi, ALL_FS_RIGHTS)
    attr = _RulesetAttr(known, 0, SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else 16
    ruleset = syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    granted: list[str] = []
    missing: list[str] = []
    unreachable: list[str] = []
    try:
        for rule in rules:
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                missing.append(rule.path)
                continue
            except PermissionError:
                unreachable.append(rule.path)
                continue
            try:
                access = rule.access & known
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= FILE_RIGHTS
                beneath = _PathBeneathAttr(access, fd)
                syscall(
                    add_rule,
                    ctypes.c_int(ruleset),
                    ctypes.c_int(RULE_PATH_BENEATH),
                    ctypes.byref(beneath),
                    ctypes.c_uint32(0),
                )
            finally:
                os.close(fd)
            granted.append(rule.path)
        syscall(restrict_self, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return Restricted(abi, tuple(granted), tuple(missing), tuple(unreachable))
