"""``httpd = true``: the dashboard as a socket the broker binds and a watcher that serves on it.

As Circus does for its web interface, the switch in [circus] stands for two
sections, ``[socket:circushttpd]`` (``httpd_host``, ``httpd_port``) and
``[watcher:circushttpd]`` running ``chapiteau-web --fd $(circus.sockets.circushttpd)``
against the control and pubsub endpoints. `with_httpd` adds them to the parsed
file, so that the broker (which binds the socket) and the supervisor (which
runs the watcher) read the same configuration.
"""

from __future__ import annotations

import shlex

from chapiteau.protocol.constants import DEFAULT_ENDPOINT, DEFAULT_PUBSUB_ENDPOINT
from chapiteau.protocol.ini import IniFile, Section
from chapiteau.protocol.records import replace

HTTPD = "circushttpd"
WEB_MODULE = "chapiteau.ctl.web.main"


def with_httpd(ini: IniFile, python: str) -> IniFile:
    """``ini`` with the dashboard's socket and watcher when [circus] says ``httpd = true``.

    ``python`` is the interpreter that runs the dashboard (the daemon's own).
    Raises ConfigError when ``httpd`` is not a boolean or a section of that name exists.
    """
    circus = ini.sections.get("circus")
    if circus is None or not circus.get_bool("httpd", False):
        return ini
    for kind in ("socket", "watcher"):
        taken = ini.sections.get(f"{kind}:{HTTPD}")
        if taken is not None:
            raise taken.error(
                None, f"httpd = true adds [{kind}:{HTTPD}] itself; rename this section"
            )
    args = [
        "-m",
        WEB_MODULE,
        "--fd",
        f"$(circus.sockets.{HTTPD})",
        "--endpoint",
        circus.get_str("endpoint") or DEFAULT_ENDPOINT,
        "--pubsub",
        circus.get_str("pubsub_endpoint") or DEFAULT_PUBSUB_ENDPOINT,
    ]
    auth_file = circus.get_str("httpd_auth_file")
    if auth_file:
        args += ["--auth-file", auth_file]
    if circus.get_bool("httpd_read_only", False):
        args.append("--read-only")
    socket = {
        "host": circus.get_str("httpd_host") or "localhost",
        "port": circus.get_str("httpd_port") or "8080",
    }
    watcher = {
        "cmd": python,
        "args": shlex.join(args),
        "use_sockets": "true",
        "numprocesses": "1",
        "singleton": "true",
    }
    sources = {key: circus.file_of(f"httpd_{key}") for key in ("host", "port")}
    sections = {
        **ini.sections,
        f"socket:{HTTPD}": Section(f"socket:{HTTPD}", socket, sources, circus.file),
        f"watcher:{HTTPD}": Section(f"watcher:{HTTPD}", watcher, {}, circus.file),
    }
    return replace(ini, sections=sections)
