"""The supervisor writes into pipes the broker reads, never into the broker's own stdout/stderr.

A hostile supervisor (``[broker] supervisor_command``) that fills its stderr
(made non-blocking for that, then blocking again) and makes the broker log
must neither make the broker's log writes fail nor block them: the broker
keeps serving and stops on SIGTERM. With ``--log-output`` the
supervisor holds no fd of the root-opened log file; its lines reach the file
through the broker.
"""

from __future__ import annotations

import subprocess
import sys

from chapiteau.supervisor.children.process_tree import descendants
from integration.harness import DEFAULT_TIMEOUT, kill_tree, open_fds, wait_until

FLOOD = """\
import fcntl, os, socket, sys, time
flags = fcntl.fcntl(2, fcntl.F_GETFL)
fcntl.fcntl(2, fcntl.F_SETFL, flags | os.O_NONBLOCK)
# Lines, then single bytes to fill the last page; bounded, for a pipe someone reads.
for chunk, most in ((b"flood " * 200 + b"\\n", 4 * 2**20), (b".", 8192)):
    written = 0
    while written < most:
        try:
            written += os.write(2, chunk)
        except BlockingIOError:
            break
# Blocking again: whoever else writes to this pipe now waits until someone reads.
fcntl.fcntl(2, fcntl.F_SETFL, flags)
# Junk frames make the broker log a warning each (and answer: nothing stays unread).
channel = socket.socket(fileno=int(os.environ["CHAPITEAU_BROKER_FD"]))
for _ in range(100):
    channel.send(b"junk")
    channel.recv(65536)
channel.close()
open(sys.argv[1], "w").close()
time.sleep(1000)
"""


def test_supervisor_filling_the_stderr_pipe_neither_stops_nor_stalls_the_broker(workdir):
    flags = workdir / "flags"
    flags.mkdir()
    flags.chmod(0o777)
    (workdir / "flood.py").write_text(FLOOD)
    (workdir / "flood.py").chmod(0o644)
    config = workdir / "chapiteau.ini"
    config.write_text(
        f"[broker]\nuser = nobody\n"
        f"supervisor_command = {sys.executable} {workdir}/flood.py {flags}/flooded\n"
    )
    config.chmod(0o644)
    # The broker's stderr is a pipe that nobody reads (a stalled journald or logger).
    broker = subprocess.Popen(
        [sys.executable, "-m", "chapiteau.broker", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until((flags / "flooded").exists)
        assert broker.poll() is None
        broker.terminate()
        assert broker.wait(DEFAULT_TIMEOUT) == 0
    finally:
        kill_tree([broker.pid, *descendants(broker.pid)])
        broker.wait(DEFAULT_TIMEOUT)
        assert broker.stderr is not None
        broker.stderr.close()


def test_supervisor_holds_no_fd_of_the_log_file_and_its_output_is_relayed(chapiteau):
    tree = chapiteau(
        "[broker]\nuser = nobody\n\n[watcher:talker]\ncmd = sh -c 'echo relayed-by-the-broker; "
        "exec sleep 600'\n",
        "--log-output",
        "chapiteau.log",
    )
    supervisor = tree.supervisor_pid()
    fds = open_fds(supervisor)
    assert fds[0] == "/dev/null"
    assert fds[1].startswith("pipe:") and fds[2].startswith("pipe:")
    assert str(tree.log_path) not in fds.values()
    wait_until(lambda: "relayed-by-the-broker" in tree.log_path.read_text())
