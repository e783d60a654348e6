"""[broker] runtime_directory: root prepares a directory for the service user's ipc endpoints.

Circus configs often put their ipc endpoints in /var/run/circus, a directory
the unprivileged supervisor could not create; the broker makes it, owned by
the service user, as systemd's RuntimeDirectory= does, and keeps its own
files out of it.
"""

from __future__ import annotations

import os
import pwd
import stat

from integration.zmq_clients import Control

NOBODY = pwd.getpwnam("nobody")


def config(runtime: str, extra: str = "") -> str:
    return f"""
[circus]
endpoint = ipc://{runtime}/endpoint.sock
pubsub_endpoint = ipc://{runtime}/pubsub.sock
{extra}
[broker]
user = nobody
runtime_directory = {runtime}

[watcher:sleeper]
cmd = sleep 1000
"""


def test_supervisor_serves_its_ipc_endpoints_in_the_runtime_directory(chapiteau, workdir):
    runtime = workdir / "circus"
    tree = chapiteau(config(str(runtime)))
    tree.wait_for("supervisor_ready")
    st = os.stat(runtime)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, NOBODY.pw_uid, NOBODY.pw_gid)
    control = Control(f"ipc://{runtime}/endpoint.sock")
    try:
        assert control.call("status")["statuses"] == {"sleeper": "active"}
    finally:
        control.close()
    assert tree.stop() == 0
    assert runtime.is_dir()


def test_pidfile_in_the_runtime_directory_is_refused(chapiteau, workdir):
    runtime = workdir / "circus"
    tree = chapiteau(config(str(runtime), f"pidfile = {runtime}/circusd.pid\n"))
    assert tree.process is not None and tree.process.wait(15) == 1
    text = tree.log_path.read_text()
    assert f"pid file: {runtime}/circusd.pid: the directory {runtime} is writable" in text
    assert not os.path.lexists(runtime / "circusd.pid")
