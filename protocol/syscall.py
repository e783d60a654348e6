"""A Linux system call by its number, through libc's ``syscall(2)``.

For the calls Python's ``os`` module lacks (``bpf``, the ``landlock_*`` calls,
``pidfd_getfd``), which the broker and the supervisor both make; the call is
this module's only I/O. Standard library only.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def syscall(number: int, *args: object) -> int:
    """The call's result; OSError with its errno when it fails. Give ``args`` as ctypes
    values (or ints, passed as C ints, and buffers, passed as pointers)."""
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result
