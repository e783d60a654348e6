"""Build a process's argv at spawn time: ``$(circus.X)`` substitution, shlex, shell mode.

This is the last stage of Circus's substitution (``Process.format_args``):
``cmd``, ``args`` and ``shell_args`` are expanded per process with
``circus.wid``, ``circus.sockets.NAME`` (the socket's fd number in the child),
``circus.env.X`` (the watcher's environment) and every watcher option name;
an unknown key stays verbatim. Unlike Circus 0.19, the legacy ``$WID`` is
substituted too.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from collections.abc import Mapping

from chapiteau.protocol.ini import env_variables, replace_variables
from chapiteau.supervisor.config import WatcherConfig

SHELL = "/bin/sh"

_LEGACY_WID = re.compile(r"\$WID(?![A-Za-z0-9_])")


def variables(watcher: WatcherConfig, wid: int, socket_fds: Mapping[str, int]) -> dict[str, object]:
    """Return what ``$(circus.KEY)`` may name for one process, keyed by lower-case KEY.

    Precedence, as in Circus: ``wid``, ``sockets.*``, ``env.*`` and the
    per-process values win over watcher options of the same name.
    """
    names: dict[str, object] = {key.lower(): value for key, value in watcher.options.items()}
    for watcher_field in dataclasses.fields(watcher):
        if watcher_field.name == "options":
            continue
        value = getattr(watcher, watcher_field.name)
        if isinstance(value, dict):
            for key, item in value.items():
                names[f"{watcher_field.name}.{key.lower()}"] = item
        elif not isinstance(value, tuple):
            names[watcher_field.name] = value
    names.update(env_variables(watcher.env))
    names.update({f"sockets.{name.lower()}": fd for name, fd in socket_fds.items()})
    names["wid"] = wid
    names["use_fds"] = watcher.use_sockets
    return names


def substitute(value: str, watcher: WatcherConfig, wid: int, socket_fds: Mapping[str, int]) -> str:
    """Expand ``$(circus.KEY)``, ``((circus.KEY))`` and ``$WID`` in ``value`` for one process."""
    if "$" not in value and "((" not in value:
        # Nothing to expand (a plain command): the variables are not gathered at each spawn.
        return value
    expanded = replace_variables(value, variables(watcher, wid, socket_fds))
    return _LEGACY_WID.sub(str(wid), expanded)


def format_args(watcher: WatcherConfig, wid: int, socket_fds: Mapping[str, int]) -> list[str]:
    """Return the argv of process ``wid`` of ``watcher``.

    ``socket_fds`` maps each socket name the watcher uses to its fd number in
    the child. Without shell: ``shlex.split(cmd) + shlex.split(args)``. With
    ``shell = true``, as Circus (Popen ``shell=True``): the words are re-joined
    with shell quoting into one command string, run as
    ``[executable or /bin/sh, "-c", string, *shell_args]``. Raises ValueError
    when a value has unbalanced quotes.
    """
    argv = [*_split(substitute(watcher.cmd, watcher, wid, socket_fds))]
    argv += _split(substitute(watcher.args, watcher, wid, socket_fds))
    if not watcher.shell:
        return argv
    shell_args = _split(substitute(watcher.shell_args or "", watcher, wid, socket_fds))
    return [watcher.executable or SHELL, "-c", shlex.join(argv), *shell_args]


@functools.lru_cache(maxsize=1024)
def _split(value: str) -> tuple[str, ...]:
    """shlex.split, which takes tens of microseconds: a watcher's command is split at
    every spawn, the same string each time unless it names a per-process variable."""
    return tuple(shlex.split(value))


def program(watcher: WatcherConfig, argv: list[str]) -> str:
    """Return the file to exec for ``argv``: ``executable`` if set, else ``argv[0]``.

    ``argv[0]`` stays the first word of cmd either way, as with Popen's
    ``executable=``; a name without a slash is looked up in the child's PATH.
    """
    if watcher.shell:
        return argv[0]
    return watcher.executable or argv[0]
