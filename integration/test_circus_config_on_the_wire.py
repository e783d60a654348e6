"""Circus's config rules, seen the way a Circus user sees them: through the control socket.

The intent of Circus's own test_config.py and test_command_signal.py, run
against the real daemon started from INI files: what the parser decided
shows up in `options`, `get`, `listsockets`, in the workers' command lines
and environments, and in who receives a signal.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from chapiteau.supervisor.children.process_tree import children, descendants
from integration.harness import argv, environ, free_port, http_get, wait_until

INCLUDED = """
[watcher:web]
cmd = /bin/sleep 999
numprocesses = 5

[env:web]
FROM_INCLUDE = included
"""


def pids(d, name: str, count: int) -> list[int]:
    found: list[int] = []

    def enough() -> bool:
        found[:] = d.call("list", name=name)["pids"]
        return len(found) >= count

    wait_until(enough)
    return found


def test_parsed_options_show_through_options_and_get(daemon, workdir: Path):
    (workdir / "more.ini").write_text(INCLUDED)
    (workdir / "more.ini").chmod(0o644)
    d = daemon(
        """
[watcher:web]
cmd = /bin/sleep $(circus.env.NAP)
args = 1000 ; the rest of the line is a comment
numprocesses = 2
graceful_timeout = 2.5
stop_signal = int
flapping.max_retry = 7
first = kept

[env]
NAP = 1000

[env:web]
FIRST = from-the-main-file
""",
        circus=f"include = {workdir}/more.ini",
    )
    options = d.call("options", name="web")["options"]
    assert options["numprocesses"] == 2  # the main file's key wins over the include
    assert options["graceful_timeout"] == 2.5
    assert options["stop_signal"] == signal.SIGINT
    assert options["flapping.max_retry"] == "7"
    assert options["cmd"] == "/bin/sleep 1000"
    assert list(options) == sorted(options)
    assert d.call("get", name="web", keys=["args"])["options"] == {"args": "1000"}
    (pid, _) = pids(d, "web", 2)
    assert argv(pid) == ["/bin/sleep", "1000", "1000"]
    env = environ(pid)
    assert (env["FIRST"], env["FROM_INCLUDE"], env["NAP"]) == (
        "from-the-main-file",
        "included",
        "1000",
    )
    assert "__name__" not in env


def test_env_sections_take_precedence_in_order(daemon):
    d = daemon(
        """
[watcher:api]
cmd = /bin/sleep 1000
copy_env = false

[env]
LEVEL = global
ONLY_GLOBAL = yes

[env:a*]
LEVEL = pattern

[env:api]
LEVEL = own
"""
    )
    (pid,) = pids(d, "api", 1)
    env = environ(pid)
    assert env["LEVEL"] == "own"
    assert env["ONLY_GLOBAL"] == "yes"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_socket_names_with_dashes_are_substituted_and_listed(daemon):
    d = daemon(
        """
[socket:my-web]
host = 127.0.0.1
port = 0

[watcher:web]
cmd = /bin/sleep 1000 ((circus.sockets.my-web))
"""
    )
    (pid,) = pids(d, "web", 1)
    (listed,) = d.call("listsockets")["sockets"]
    assert listed["name"] == "my-web"
    assert argv(pid)[-1] == str(listed["fd"])
    assert os.readlink(f"/proc/{pid}/fd/{listed['fd']}").startswith("socket:")


SIGNAL_TREE = """\
import os, signal, sys, time
marks = sys.argv[1]
def mark(who):
    def handler(signum, frame):
        with open(os.path.join(marks, f"{who}-{os.getpid()}"), "w"):
            pass
    signal.signal(signal.SIGUSR1, handler)
if os.fork() == 0:
    if os.fork() == 0:
        mark("grandchild")
    else:
        mark("child")
else:
    mark("parent")
while True:
    time.sleep(1)
"""


def _signal_tree(daemon, workdir: Path):
    marks = workdir / "marks"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    (workdir / "tree.py").write_text(SIGNAL_TREE)
    (workdir / "tree.py").chmod(0o644)
    d = daemon(f"[watcher:tree]\ncmd = python3 {workdir}/tree.py {marks}\ncopy_env = true\n")
    (pid,) = pids(d, "tree", 1)
    wait_until(lambda: len(descendants(pid)) == 2)
    time.sleep(0.3)  # the handlers are installed right after the forks
    return d, pid, marks


def _marked(marks: Path, count: int) -> set[str]:
    wait_until(lambda: len(list(marks.iterdir())) >= count)
    time.sleep(0.2)  # anything else would have arrived by now
    return {name.split("-")[0] for name in os.listdir(marks)}


def test_signal_reaches_only_the_worker_by_default(daemon, workdir: Path):
    d, pid, marks = _signal_tree(daemon, workdir)
    assert d.call("signal", name="tree", signum="USR1", pid=pid)["status"] == "ok"
    assert _marked(marks, 1) == {"parent"}


def test_signal_with_children_reaches_only_the_direct_children(daemon, workdir: Path):
    d, pid, marks = _signal_tree(daemon, workdir)
    assert d.call("signal", name="tree", signum="USR1", pid=pid, children=True)["status"] == "ok"
    assert _marked(marks, 1) == {"child"}
    assert len(children(pid)) == 1


def test_recursive_signal_reaches_the_whole_tree(daemon, workdir: Path):
    d, pid, marks = _signal_tree(daemon, workdir)
    reply = d.call("signal", name="tree", signum="USR1", pid=pid, recursive=True)
    assert reply["status"] == "ok"
    assert _marked(marks, 3) == {"parent", "child", "grandchild"}


def _served(port: int) -> bool:
    try:
        http_get(port, timeout=2)
    except OSError:
        return False
    return True


def _web(port_key: str, extra: str = "") -> str:
    return (
        "[watcher:web]\ncmd = python3 hello_wsgi.py --fd $(circus.sockets.web)\ncopy_env = true\n\n"
        f"[socket:web]\nhost = 127.0.0.1\nport = {port_key}\n{extra}"
    )


def test_reloadconfig_rebinds_a_moved_socket_and_adds_a_new_one(daemon):
    first, moved, added = free_port(), free_port(), free_port()
    d = daemon(_web(str(first)))
    (old,) = pids(d, "web", 1)
    wait_until(lambda: _served(first))
    d.rewrite_config(
        _web(str(moved))
        + "\n[watcher:api]\ncmd = python3 hello_wsgi.py --fd $(circus.sockets.api)\n"
        f"copy_env = true\n\n[socket:api]\nhost = 127.0.0.1\nport = {added}\n"
    )
    assert d.call("reloadconfig", waiting=True)["status"] == "ok"
    listed = {s["name"]: s["port"] for s in d.call("listsockets")["sockets"]}
    assert listed == {"web": moved, "api": added}
    wait_until(lambda: _served(moved) and _served(added))
    assert old not in d.call("list", name="web")["pids"]
    assert not _served(first)


def test_reloadconfig_with_an_unbindable_socket_changes_nothing(daemon):
    port = free_port()
    d = daemon(_web(str(port)))
    (old,) = pids(d, "web", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d.rewrite_config(_web(str(taken.getsockname()[1])))
        reply = d.call("reloadconfig", waiting=True)
    assert reply["status"] == "error"
    assert "address already in use" in reply["reason"]
    assert d.call("list", name="web")["pids"] == [old]
    assert {s["port"] for s in d.call("listsockets")["sockets"]} == {port}
    assert _served(port)
