"""Circus hooks, imported from the watcher's PYTHONPATH, run in the real supervisor."""

from __future__ import annotations

from pathlib import Path

HOOKS = """
import os

OUT = os.path.join(os.path.dirname(__file__), "out")



def refuse(watcher, arbiter, hook_name, **kwargs):
    return False


def record_pid(watcher, arbiter, hook_name, pid, **kwargs):
    with open(os.path.join(OUT, "after_spawn"), "a") as f:
        f.write(f"{watcher.name} {pid}\\n")
    return True


def explode(watcher, arbiter, hook_name, **kwargs):
    raise RuntimeError("boom from " + hook_name)
"""


def start(chapiteau, workdir: Path, hooks: str):
    (workdir / "myhooks.py").write_text(HOOKS)
    (workdir / "out").mkdir()
    (workdir / "out").chmod(0o777)
    return chapiteau(f"""
[broker]
user = nobody

[watcher:app]
cmd = sleep 1000
numprocesses = 2
{hooks}

[watcher:other]
cmd = sleep 1000

[env:app]
PYTHONPATH = {workdir}
""")


def test_before_start_returning_false_keeps_the_watcher_stopped(chapiteau, workdir):
    tree = start(chapiteau, workdir, "hooks.before_start = myhooks.refuse")
    tree.wait_for("watcher_start_refused", where=lambda e: e["watcher"] == "app")
    tree.worker_pids("other", 1)
    assert [e["watcher"] for e in tree.events_named("process_spawned")] == ["other"]


def test_after_spawn_receives_each_new_pid(chapiteau, workdir):
    tree = start(chapiteau, workdir, "hooks.after_spawn = myhooks.record_pid")
    workers = tree.worker_pids("app", 2)
    recorded = (workdir / "out" / "after_spawn").read_text().split("\n")
    assert sorted(line for line in recorded if line) == sorted(f"app {pid}" for pid in workers)


def test_a_failing_hook_is_logged_and_stops_its_watcher(chapiteau, workdir):
    tree = start(chapiteau, workdir, "hooks.after_start = myhooks.explode")
    [failed] = tree.wait_for("hook_failed")
    assert (failed["watcher"], failed["hook"]) == ("app", "after_start")
    assert "boom from after_start" in failed["error"]
    tree.wait_for("watcher_stopped", where=lambda e: e["watcher"] == "app")
    assert tree.worker_pids("other", 1)
