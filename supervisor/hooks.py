"""Load and run a watcher's Circus hooks.

A hook is a Python callable named in the config as ``hooks.<name> =
package.module.func[, ignore_failure]``. It is imported into the
supervisor when the watcher is built, so a bad path is reported then, not at
the first start. ``Hooks.run`` gives Circus's calling convention and results:

* no hook configured → True;
* the hook returns → its truthiness, and a ``hook_success`` event (even when
  it returned a falsy value);
* the hook raises → the traceback is logged, a ``hook_failure`` event is
  published, and the result is True only for hooks whose failure is ignored:
  ``before_stop``, ``after_stop``, ``before_signal``, ``after_signal``,
  ``extended_stats`` always, any other hook when configured with ``, true``.

``extended_stats`` is called positionally and without events, and its
exceptions propagate, because Circus fails the ``stats`` command with them.

Where this module deliberately differs from Circus (docs/circus-differences.md):

* ``set hooks.<name>`` replaces that hook's ignore-failure flag; Circus only
  ever adds to its ignore list, so ``, false`` could not undo an earlier
  ``, true``.
* A dotted path naming a module rather than a callable is refused when the
  watcher is built; Circus accepts it and fails at every call.
"""

from __future__ import annotations

import importlib
import site
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

from chapiteau.protocol.options import HOOK_NAMES
from chapiteau.supervisor.children.spawn import user_code_loaded

log = structlog.get_logger("chapiteau.supervisor")


# Their results do not decide anything in Circus, so a crash in them must not
# turn into a refusal.
ALWAYS_IGNORED = frozenset(
    {"before_stop", "after_stop", "before_signal", "after_signal", "extended_stats"}
)

Publish = Callable[[str, dict], None]


class HookError(Exception):
    """A configured hook cannot be imported (or is not a hook at all)."""


@dataclass(frozen=True)
class _Hook:
    path: str
    ignore_failure: bool
    function: Callable[..., Any]


class Hooks:
    """The hooks of one watcher, imported and ready to run."""

    def __init__(
        self,
        watcher_name: str,
        hooks: Mapping[str, tuple[str, bool]],
        publish: Publish,
        pythonpath: Sequence[str] = (),
    ) -> None:
        """Import every hook in ``hooks`` (name → (dotted path, ignore failure)).

        ``pythonpath`` (the watcher environment's PYTHONPATH entries) is added
        to ``sys.path`` first, so that hooks can live next to the application.
        ``publish(event, payload)`` receives the bare event name. Raises
        HookError when a hook cannot be imported.
        """
        self.watcher_name = watcher_name
        self._publish = publish
        for directory in pythonpath:
            # site.addsitedir, as Circus does, so that .pth files there count too.
            if directory and directory not in sys.path:
                site.addsitedir(directory)
        self._hooks = self._resolve(hooks, reload_modules=False)

    @property
    def configured(self) -> dict[str, tuple[str, bool]]:
        """Hook name → (dotted path, ignore failure), as currently loaded."""
        return {name: (hook.path, hook.ignore_failure) for name, hook in self._hooks.items()}

    def run(self, name: str, watcher: object, arbiter: object, **extra: Any) -> bool:
        """Run hook ``name`` with Circus's keyword arguments; see the module docstring."""
        if name not in HOOK_NAMES or name == "extended_stats":
            raise ValueError(f"{name!r} is not a hook run by Hooks.run")
        hook = self._hooks.get(name)
        if hook is None:
            return True
        try:
            result = hook.function(watcher=watcher, arbiter=arbiter, hook_name=name, **extra)
        except Exception as exc:  # a hook is user code and may raise anything
            log.error(
                "hook_failed",
                watcher=self.watcher_name,
                hook=name,
                error=str(exc),
                exc_info=True,
            )
            self._publish("hook_failure", {"name": name, "time": time.time(), "error": str(exc)})
            return hook.ignore_failure or name in ALWAYS_IGNORED
        self._publish("hook_success", {"name": name, "time": time.time()})
        return bool(result)

    def extended_stats(self, watcher: object, arbiter: object, pid: int, stats: dict) -> None:
        """Let the ``extended_stats`` hook add to ``stats``; its exceptions propagate."""
        hook = self._hooks.get("extended_stats")
        if hook is not None:
            hook.function(watcher, arbiter, "extended_stats", pid=pid, stats=stats)

    def reload(self, hooks: Mapping[str, tuple[str, bool]]) -> None:
        """Import the given hooks afresh, reloading their modules (``set hooks.*``).

        Hooks not named in ``hooks`` stay as they are. If one of them cannot be
        imported, HookError is raised and none of them changes.
        """
        self._hooks = {**self._hooks, **self._resolve(hooks, reload_modules=True)}

    def _resolve(
        self, hooks: Mapping[str, tuple[str, bool]], reload_modules: bool
    ) -> dict[str, _Hook]:
        # A hook file may have been written since the import system last
        # listed its directory.
        importlib.invalidate_caches()
        reloaded: set[str] = set()
        resolved = {}
        for name, (path, ignore_failure) in hooks.items():
            if name not in HOOK_NAMES:
                raise HookError(
                    f"watcher {self.watcher_name!r}: hooks.{name} is not a hook; "
                    f"use one of {', '.join(HOOK_NAMES)}"
                )
            try:
                function = _import(path, reload_modules, reloaded)
            except Exception as exc:  # importing user code can raise anything
                error = " ".join(f"{type(exc).__name__}: {exc}".split())
                raise HookError(
                    f"watcher {self.watcher_name!r}: hooks.{name} = {path!r} cannot be "
                    f"imported ({error}); check the dotted path and the watcher's PYTHONPATH"
                ) from exc
            resolved[name] = _Hook(path, ignore_failure, function)
        return resolved


def _import(path: str, reload_modules: bool, reloaded: set[str]) -> Callable[..., Any]:
    """The callable named by ``pkg.mod.func``, ``pkg.mod.Class.method`` or ``pkg.mod:func``.

    The module is reloaded when ``reload_modules`` is set and it was imported
    before, at most once per name in ``reloaded``.
    """
    path = path.strip()
    if ":" in path:
        module_name, _, attributes = path.partition(":")
        if not module_name or not attributes:
            raise ValueError("expected package.module:function")
        module = _import_module(module_name, reload_modules, reloaded)
    else:
        module, attributes = _import_longest_module(path, reload_modules, reloaded)
    found: Any = module
    for attribute in attributes.split("."):
        found = getattr(found, attribute)
    if not callable(found):
        raise TypeError(f"{path} is a {type(found).__name__}, not a function")
    return found


def _import_longest_module(
    path: str, reload_modules: bool, reloaded: set[str]
) -> tuple[ModuleType, str]:
    """Import the longest module prefix of a dotted ``path``; also return the rest."""
    parts = path.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError("expected package.module.function or package.module:function")
    for split in range(len(parts) - 1, 1, -1):
        module_name = ".".join(parts[:split])
        try:
            return _import_module(module_name, reload_modules, reloaded), ".".join(parts[split:])
        except ModuleNotFoundError as exc:
            # Only "this prefix is not a module" means: try a shorter one. A
            # module that exists but imports something missing is the error.
            if exc.name is None or not _is_prefix(exc.name, module_name):
                raise
    return _import_module(parts[0], reload_modules, reloaded), ".".join(parts[1:])


def _is_prefix(package: str, module_name: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")


def _import_module(module_name: str, reload_modules: bool, reloaded: set[str]) -> ModuleType:
    user_code_loaded()
    if reload_modules and module_name in sys.modules and module_name not in reloaded:
        reloaded.add(module_name)
        return importlib.reload(sys.modules[module_name])
    return importlib.import_module(module_name)
