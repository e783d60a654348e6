"""chapiteau as a container's PID 1: it reaps every orphan, and TERM or INT stop it cleanly.

Docker cannot build or run here, so the test makes what a container is to its
first process: a new PID namespace (``unshare --pid --fork --mount-proc``, as
examples/container/ runs it with ``docker run``). There the kernel hands the
broker every orphan of the namespace, not only those of its own tree (a
``docker exec`` leaves such orphans), and ignores any signal it has no handler
for. It runs the container example's config (examples/container/chapiteau.ini)
with a watcher that leaves orphans. The pids the broker logs are the
namespace's; the test looks at the same processes from outside, by their pids
here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from chapiteau.supervisor.children.process_tree import descendants
from integration.harness import DEFAULT_TIMEOUT, EXAMPLES, free_port, http_get, wait_until

ORPHANS = 20
FORKER = f"""
[watcher:forker]
# Each inner shell exits at once, leaving its sleep to whoever reaps orphans.
cmd = sh -c 'for i in $(seq {ORPHANS}); do sh -c "sleep 0.2 &"; done; exec sleep 1000'
"""


def container_config(workdir: Path, port: int) -> str:
    """examples/container/chapiteau.ini, moved into ``workdir`` and ``port``, plus a forker."""
    text = (EXAMPLES / "container" / "chapiteau.ini").read_text()
    for old, new in (
        ("/run/chapiteau", str(workdir / "run")),
        ("/srv/hello", str(workdir)),
        ("port = 80\n", f"port = {port}\n"),
    ):
        assert old in text
        text = text.replace(old, new)
    return text + FORKER


def state(pid: int) -> str:
    """The state letter of ``pid`` ("Z": zombie); "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def namespace_init(tree) -> int:
    """The broker, PID 1 of the namespace: the only child of ``unshare --fork``."""
    children = wait_until(lambda: descendants(tree.pid)[:1], what="unshare's child")
    return children[0]


def zombies(init: int) -> list[int]:
    return [pid for pid in descendants(init) if state(pid) == "Z"]


def sleepers(init: int) -> list[int]:
    """The orphaned ``sleep 0.2`` processes still in the namespace (zombies included)."""
    found = []
    for pid in descendants(init):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if cmdline.read() == b"sleep\x000.2\x00":
                    found.append(pid)
        except OSError:
            pass
    return found


UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


@pytest.fixture
def in_namespace(chapiteau, workdir):
    """Start the container's chapiteau as PID 1 of a new PID namespace: (tree, its pid, port)."""
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no new PID namespace here (it needs CAP_SYS_ADMIN): {probe.stderr.strip()}")
    port = free_port()
    tree = chapiteau(container_config(workdir, port), prefix=UNSHARE)
    init = namespace_init(tree)
    tree.wait_for("service_ready")
    return tree, init, port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_orphans_are_reaped_and_a_signal_from_outside_stops_everything(in_namespace, signum):
    tree, init, port = in_namespace
    assert "hello" in http_get(port)
    # The forker's orphans go to the supervisor (a subreaper); none is left a zombie.
    tree.wait_for("process_spawned", where=lambda e: e.get("watcher") == "forker")
    wait_until(lambda: not sleepers(init) and not zombies(init), what="orphans reaped")

    # Orphans of a process entered from outside (docker exec) go to PID 1: the broker.
    subprocess.run(
        ["nsenter", f"--target={init}", "--pid", "--mount", "sh", "-c", "sleep 0.2 & sleep 0.2 &"],
        check=True,
        timeout=DEFAULT_TIMEOUT,
    )
    tree.wait_for("orphan_reaped", count=2)
    wait_until(lambda: not sleepers(init) and not zombies(init), what="PID 1 reaped its orphans")

    tree.track_tree()
    everything = descendants(init)
    os.kill(init, signum)
    assert tree.process.wait(DEFAULT_TIMEOUT) == 0
    assert not [pid for pid in everything if state(pid)]
