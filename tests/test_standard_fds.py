"""Tests for chapiteau.protocol.standard_fds: a program started with fds 0-2 closed."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import socket, sys
from chapiteau.protocol.standard_fds import reserve_standard_fds
reserve_standard_fds()
listener = socket.socket()
print(listener.fileno() > 2, sys.stdin is not None, sys.stdout is not None, file=sys.stderr)
"""


def test_a_socket_opened_after_reserving_never_lands_on_a_standard_fd():
    done = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" -c "$1" 0<&- 1>&-', sys.executable, PROGRAM],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stderr.split() == ["True", "True", "True"]
