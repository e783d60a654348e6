"""The supervisor gets an allow-listed environment, never root's (secrets, systemd's variables).

What a ``copy_env`` worker copies is the supervisor's environment, so the
same allow-list bounds it; ``[broker] supervisor_env`` passes more by name.
"""

from __future__ import annotations

import os
import pwd

import pytest

from integration.harness import environ

ROOT_ENVIRONMENT = {
    "SECRET": "x",
    "APP_SETTING": "on",
    "NOTIFY_SOCKET": "/x",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "3",
    "LISTEN_PID": "1",
    "LISTEN_FDNAMES": "web",
    "LANG": "C.UTF-8",
    "LC_TIME": "C",
    "TZ": "UTC",
}
SYSTEMD = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)
CONFIG = """
[broker]
user = nobody
{extra}

[watcher:copier]
cmd = sleep 1000
copy_env = true
"""


@pytest.fixture
def root_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ROOT_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def test_supervisor_and_copy_env_workers_see_only_the_allow_list(chapiteau, root_environment):
    tree = chapiteau(CONFIG.format(extra=""))
    nobody = pwd.getpwnam("nobody")
    supervisor = environ(tree.supervisor_pid())
    # LC_* as a family: Python's locale coercion may add LC_CTYPE to the broker's own.
    assert {name for name in supervisor if not name.startswith("LC_")} <= {
        "PATH",
        "LANG",
        "TZ",
        "PYTHONPATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "CHAPITEAU_BROKER_FD",
        "CHAPITEAU_SUPERVISOR_START",
        "CHAPITEAU_INSTANCE",
    }
    assert supervisor["CHAPITEAU_SUPERVISOR_START"] == "1"
    assert supervisor["CHAPITEAU_INSTANCE"] == os.path.realpath(tree.config_path)
    assert supervisor["LANG"] == "C.UTF-8" and supervisor["LC_TIME"] == "C"
    assert supervisor["HOME"] == nobody.pw_dir and supervisor["USER"] == "nobody"
    assert supervisor["SHELL"] == nobody.pw_shell
    [worker] = tree.worker_pids("copier", 1)
    assert not set(environ(worker)) & {"SECRET", "APP_SETTING", *SYSTEMD}


def test_supervisor_env_passes_more_variables_but_never_systemd_s(chapiteau, root_environment):
    extra = f"supervisor_env = APP_* {' '.join(SYSTEMD)}"
    tree = chapiteau(CONFIG.format(extra=extra))
    supervisor = environ(tree.supervisor_pid())
    assert supervisor["APP_SETTING"] == "on"
    assert "SECRET" not in supervisor
    assert not set(supervisor) & set(SYSTEMD)
    [worker] = tree.worker_pids("copier", 1)
    assert environ(worker)["APP_SETTING"] == "on"
