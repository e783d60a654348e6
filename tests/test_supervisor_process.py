"""The supervisor's environment: an allow-list of the broker's, plus the service user's identity."""

from __future__ import annotations

import os
import pwd

from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.supervisor_process import supervisor_environment

NOBODY = pwd.getpwnam("nobody")
USER = ServiceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, ())
ROOT_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "TZ": "UTC",
    "PYTHONPATH": "/opt/chapiteau",
    "HOME": "/root",
    "USER": "root",
    "AWS_SECRET_ACCESS_KEY": "hush",
    "APP_MODE": "prod",
    "APPLE": "no",
}


def test_only_the_allow_list_passes_and_the_identity_is_the_service_user():
    env = supervisor_environment(USER, 5, ROOT_ENV, start=3)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "PYTHONPATH": "/opt/chapiteau",
        "HOME": NOBODY.pw_dir,
        "USER": "nobody",
        "LOGNAME": "nobody",
        "SHELL": NOBODY.pw_shell,
        "CHAPITEAU_BROKER_FD": "5",
        "CHAPITEAU_SUPERVISOR_START": "3",
    }


def test_configured_names_and_prefixes_pass_too():
    env = supervisor_environment(USER, 5, ROOT_ENV, ("APP_*", "AWS_SECRET_ACCESS_KEY"))
    assert env["APP_MODE"] == "prod" and env["AWS_SECRET_ACCESS_KEY"] == "hush"
    assert "APPLE" not in env


def test_a_uid_without_a_passwd_entry_gets_no_identity_at_all():
    unknown = ServiceUser("4242", 4242, 4242, ())
    env = supervisor_environment(unknown, 5, ROOT_ENV)
    assert not {"HOME", "USER", "LOGNAME", "SHELL"} & set(env)


def test_the_broker_environment_is_not_changed():
    before = dict(os.environ)
    supervisor_environment(USER, 5, os.environ)
    assert dict(os.environ) == before
