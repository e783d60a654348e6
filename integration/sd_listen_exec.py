"""Exec a command with fds passed the way systemd passes them: a test's stand-in for systemd.

    python sd_listen_exec.py [--user NAME] FD:NAME [FD:NAME ...] -- COMMAND [ARG ...]

The inherited fds become 3, 4, ... in the order given; LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID are set, the last to this very process's pid,
which the command keeps (exec does not change it). With ``--user`` the
credentials switch to NAME before the exec, as systemd's ``User=`` does.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import sys


def main(argv: list[str]) -> None:
    user = None
    if argv[:1] == ["--user"]:
        user, argv = argv[1], argv[2:]
    split = argv.index("--")
    passed = [word.split(":", 1) for word in argv[:split]]
    command = argv[split + 1 :]
    # Above the targets first: a target number may be the source of another fd.
    moved = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 3 + len(passed)) for fd, _ in passed]
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index)
        os.close(fd)
    for fd, _ in passed:
        if int(fd) >= 3 + len(passed):
            os.close(int(fd))
    os.environ["LISTEN_FDS"] = str(len(passed))
    os.environ["LISTEN_FDNAMES"] = ":".join(name for _, name in passed)
    os.environ["LISTEN_PID"] = str(os.getpid())
    if user is not None:
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
