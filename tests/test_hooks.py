"""Tests for chapiteau.supervisor.hooks: real hook modules written into tmp_path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from chapiteau.supervisor.children import spawn as spawn_module
from chapiteau.supervisor.hooks import HookError, Hooks

HOOK_MODULE = """
calls = []

def accept(**kwargs):
    calls.append(kwargs)
    return True

def refuse(**kwargs):
    return False

def crash(**kwargs):
    raise RuntimeError("the database is down")

def add_stats(watcher, arbiter, hook_name, pid, stats):
    stats["hook"] = (watcher, arbiter, hook_name, pid)

def crash_stats(watcher, arbiter, hook_name, pid, stats):
    raise RuntimeError("no stats today")

class Checks:
    @staticmethod
    def accept(**kwargs):
        return True
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give each test its own sys.path, and forget the hook modules it imported."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    # Byte-code caches keyed on whole-second mtimes would hide a quick edit.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def hook_dir(tmp_path: Path) -> Path:
    (tmp_path / "myhooks.py").write_text(HOOK_MODULE)
    return tmp_path


class Recorder:
    """A publish callback that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, payload: dict) -> None:
        self.events.append((event, payload))


def make_hooks(
    hook_dir: Path, hooks: dict[str, tuple[str, bool]], publish: Recorder | None = None
) -> Hooks:
    return Hooks("web", hooks, publish or Recorder(), pythonpath=[str(hook_dir)])


def test_missing_hook_succeeds_without_events(hook_dir: Path) -> None:
    publish = Recorder()
    hooks = make_hooks(hook_dir, {}, publish)
    assert hooks.run("before_start", "w", "a") is True
    assert publish.events == []


def test_hook_gets_watcher_arbiter_name_and_extra_keywords(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"after_spawn": ("myhooks.accept", False)})
    assert hooks.run("after_spawn", "the watcher", "the arbiter", pid=42) is True
    assert sys.modules["myhooks"].calls == [
        {"watcher": "the watcher", "arbiter": "the arbiter", "hook_name": "after_spawn", "pid": 42}
    ]


def test_hook_returning_false_fails_with_a_success_event(hook_dir: Path) -> None:
    publish = Recorder()
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks.refuse", False)}, publish)
    assert hooks.run("before_start", "w", "a") is False
    [(event, payload)] = publish.events
    assert event == "hook_success"
    assert payload["name"] == "before_start"
    assert isinstance(payload["time"], float)


def test_raising_hook_fails_with_a_failure_event(hook_dir: Path) -> None:
    publish = Recorder()
    hooks = make_hooks(hook_dir, {"before_spawn": ("myhooks.crash", False)}, publish)
    assert hooks.run("before_spawn", "w", "a") is False
    [(event, payload)] = publish.events
    assert event == "hook_failure"
    assert payload["name"] == "before_spawn"
    assert payload["error"] == "the database is down"
    assert isinstance(payload["time"], float)


def test_raising_hook_configured_to_ignore_failure_succeeds(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_spawn": ("myhooks.crash", True)})
    assert hooks.run("before_spawn", "w", "a") is True


@pytest.mark.parametrize("name", ["before_stop", "after_stop", "before_signal", "after_signal"])
def test_raising_hook_whose_result_circus_ignores_succeeds(hook_dir: Path, name: str) -> None:
    hooks = make_hooks(hook_dir, {name: ("myhooks.crash", False)})
    assert hooks.run(name, "w", "a") is True


def test_raising_hook_is_logged_with_its_traceback(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"after_start": ("myhooks.crash", False)})
    with structlog.testing.capture_logs() as logs:
        hooks.run("after_start", "w", "a")
    [entry] = logs
    assert entry["event"] == "hook_failed"
    assert entry["watcher"] == "web"
    assert entry["hook"] == "after_start"
    assert entry["error"] == "the database is down"
    assert entry["exc_info"] is True


def test_colon_form_names_the_function(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks:refuse", False)})
    assert hooks.run("before_start", "w", "a") is False


def test_dotted_path_may_name_a_method_of_a_class(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks.Checks.accept", False)})
    assert hooks.run("before_start", "w", "a") is True


def test_hook_in_a_package_is_found(hook_dir: Path) -> None:
    package = hook_dir / "myapp" / "hooks"
    package.mkdir(parents=True)
    (hook_dir / "myapp" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "checks.py").write_text("def check(**kwargs):\n    return False\n")
    hooks = make_hooks(hook_dir, {"before_start": ("myapp.hooks.checks.check", False)})
    assert hooks.run("before_start", "w", "a") is False


def test_pythonpath_directory_is_added_to_sys_path(hook_dir: Path) -> None:
    make_hooks(hook_dir, {})
    assert str(hook_dir) in sys.path


def test_unknown_module_is_a_hook_error_naming_watcher_hook_and_path(hook_dir: Path) -> None:
    with pytest.raises(HookError) as caught:
        make_hooks(hook_dir, {"before_start": ("nosuchmodule.check", False)})
    message = str(caught.value)
    assert "'web'" in message
    assert "hooks.before_start" in message
    assert "'nosuchmodule.check'" in message
    assert "No module named 'nosuchmodule'" in message
    assert "\n" not in message


def test_unknown_function_is_a_hook_error(hook_dir: Path) -> None:
    with pytest.raises(HookError, match="has no attribute 'nosuchfunction'"):
        make_hooks(hook_dir, {"before_start": ("myhooks.nosuchfunction", False)})


def test_module_importing_something_missing_reports_that_import(hook_dir: Path) -> None:
    (hook_dir / "pkg").mkdir()
    (hook_dir / "pkg" / "__init__.py").write_text("")
    (hook_dir / "pkg" / "broken.py").write_text("import nosuchdependency\n")
    with pytest.raises(HookError, match="No module named 'nosuchdependency'"):
        make_hooks(hook_dir, {"before_start": ("pkg.broken.check", False)})


def test_syntax_error_in_the_hook_module_is_a_hook_error(hook_dir: Path) -> None:
    (hook_dir / "broken.py").write_text("def check(:\n")
    with pytest.raises(HookError, match="SyntaxError"):
        make_hooks(hook_dir, {"before_start": ("broken.check", False)})


def test_path_naming_a_module_is_a_hook_error(hook_dir: Path) -> None:
    (hook_dir / "pkg").mkdir()
    (hook_dir / "pkg" / "__init__.py").write_text("from . import mod\n")
    (hook_dir / "pkg" / "mod.py").write_text("")
    with pytest.raises(HookError, match="not a function"):
        make_hooks(hook_dir, {"before_start": ("pkg.mod", False)})


@pytest.mark.parametrize("path", ["check", "myhooks.", "myhooks:", ":accept"])
def test_malformed_path_is_a_hook_error(hook_dir: Path, path: str) -> None:
    with pytest.raises(HookError):
        make_hooks(hook_dir, {"before_start": (path, False)})


def test_unknown_hook_name_is_a_hook_error(hook_dir: Path) -> None:
    with pytest.raises(HookError, match=r"hooks\.before_lunch is not a hook"):
        make_hooks(hook_dir, {"before_lunch": ("myhooks.accept", False)})


def test_running_an_unknown_hook_name_is_a_programming_error(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {})
    with pytest.raises(ValueError):
        hooks.run("before_lunch", "w", "a")


def test_reload_picks_up_an_edited_module(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks.accept", False)})
    (hook_dir / "myhooks.py").write_text("def accept(**kwargs):\n    return 'no' == 'yes'\n")
    hooks.reload({"before_start": ("myhooks.accept", False)})
    assert hooks.run("before_start", "w", "a") is False


def test_reload_finds_a_module_written_after_start(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"after_start": ("myhooks.accept", False)})
    (hook_dir / "newhooks.py").write_text("def refuse(**kwargs):\n    return False\n")
    hooks.reload({"before_start": ("newhooks.refuse", False)})
    assert hooks.run("before_start", "w", "a") is False


def test_reload_keeps_the_hooks_it_is_not_given(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks.refuse", False)})
    hooks.reload({"after_start": ("myhooks.accept", False)})
    assert hooks.configured == {
        "before_start": ("myhooks.refuse", False),
        "after_start": ("myhooks.accept", False),
    }


def test_reload_replaces_the_ignore_failure_flag(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_spawn": ("myhooks.crash", True)})
    hooks.reload({"before_spawn": ("myhooks.crash", False)})
    assert hooks.run("before_spawn", "w", "a") is False


def test_failed_reload_changes_no_hook(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"before_start": ("myhooks.refuse", False)})
    with pytest.raises(HookError):
        hooks.reload(
            {"before_start": ("myhooks.accept", False), "after_start": ("nosuchmodule.f", False)}
        )
    assert hooks.run("before_start", "w", "a") is False


def test_extended_stats_mutates_the_stats(hook_dir: Path) -> None:
    publish = Recorder()
    hooks = make_hooks(hook_dir, {"extended_stats": ("myhooks.add_stats", False)}, publish)
    stats: dict = {"pid": 7}
    hooks.extended_stats("w", "a", 7, stats)
    assert stats == {"pid": 7, "hook": ("w", "a", "extended_stats", 7)}
    assert publish.events == []


def test_extended_stats_exception_propagates(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"extended_stats": ("myhooks.crash_stats", True)})
    with pytest.raises(RuntimeError, match="no stats today"):
        hooks.extended_stats("w", "a", 7, {})


def test_extended_stats_without_a_hook_leaves_the_stats_alone(hook_dir: Path) -> None:
    stats: dict = {"pid": 7}
    make_hooks(hook_dir, {}).extended_stats("w", "a", 7, stats)
    assert stats == {"pid": 7}


def test_extended_stats_is_not_run_as_an_event_hook(hook_dir: Path) -> None:
    hooks = make_hooks(hook_dir, {"extended_stats": ("myhooks.add_stats", False)})
    with pytest.raises(ValueError):
        hooks.run("extended_stats", "w", "a")


def test_loading_a_hook_makes_each_spawn_check_the_fds_again(
    hook_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = spawn_module._FdTrust()
    trust.trusted = True
    monkeypatch.setattr(spawn_module, "_FDS", trust)
    make_hooks(hook_dir, {"after_spawn": ("myhooks.accept", False)})
    assert (trust.trusted, trust.user_code) == (False, True)
