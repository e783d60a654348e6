"""The running broker is confined as docs/security.md says, read from /proc as an operator would.

The broker: its own account, CAP_KILL and CAP_NET_BIND_SERVICE only (bounding
set included), no_new_privs, a seccomp filter, a Landlock domain. The
launcher: uid 0 with CAP_SETUID and CAP_SETGID, an empty bounding set. The
supervisor: the service user, no capability, no seccomp filter; a child of
the broker. And the confined broker still does its job: restarts a killed
supervisor, binds a port below 1024 on reload.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import socket

import pytest

from chapiteau.broker import landlock
from integration.conftest import BROKER_USER
from integration.harness import free_port, http_get, wait_until
from tests.forked import status_fields

NOBODY = pwd.getpwnam("nobody")
KILL, NET_BIND_SERVICE, SETGID, SETUID = 5, 10, 6, 7
BROKER_CAPABILITIES = (1 << KILL) | (1 << NET_BIND_SERVICE)  # 0x420
LAUNCHER_CAPABILITIES = (1 << SETUID) | (1 << SETGID)  # 0xc0


def web(port: int, extra: str = "") -> str:
    return (
        "[watcher:web]\ncmd = python3 hello_wsgi.py --fd $(circus.sockets.web)\ncopy_env = true\n\n"
        f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n{extra}"
    )


def free_low_port() -> int:
    """A port below 1024 (never 80) that nothing listens on."""
    for port in range(1000, 900, -1):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 901 and 1000")


@pytest.fixture
def running(daemon):
    port = free_port()
    d = daemon(web(port))
    wait_until(lambda: "hello" in http_get(port))
    return d, port


def test_the_broker_runs_as_its_own_account_with_two_capabilities_seccomp_and_no_new_privs(
    running,
):
    d, _ = running
    fields = status_fields(d.tree.pid)
    account = pwd.getpwnam(BROKER_USER)
    assert fields["Uid"].split() == [str(account.pw_uid)] * 4
    assert fields["Gid"].split() == [str(account.pw_gid)] * 4
    assert set(fields["Groups"].split()) == {str(account.pw_gid), str(NOBODY.pw_gid)}
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[key], 16) == BROKER_CAPABILITIES, key
    assert int(fields["CapInh"], 16) == int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert (fields["Seccomp"], fields["Seccomp_filters"]) == ("2", "1")


def test_the_broker_logs_its_landlock_abi_and_seccomp_rules(running):
    d, _ = running
    (confined,) = d.tree.events_named("broker_confined")
    assert confined["landlock_abi"] == landlock.abi_version() > 0
    assert confined["seccomp_rules"] > 100
    assert confined["uid"] == pwd.getpwnam(BROKER_USER).pw_uid
    assert confined["capabilities"] == ["kill", "net_bind_service"]


def test_the_launcher_is_root_with_setuid_and_setgid_only(running):
    d, _ = running
    launcher = d.tree.events_named("broker_confined")[0]["launcher"]
    fields = status_fields(launcher)
    assert fields["PPid"] == str(d.tree.pid)
    assert fields["Uid"].split() == ["0"] * 4
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == LAUNCHER_CAPABILITIES
    assert int(fields["CapBnd"], 16) == 0
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "0")


def test_the_supervisor_is_the_brokers_child_unconfined_and_without_capabilities(running):
    d, _ = running
    fields = status_fields(d.tree.supervisor_pid())
    assert fields["PPid"] == str(d.tree.pid)
    assert fields["Uid"].split() == [str(NOBODY.pw_uid)] * 4
    assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == 0
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "0")


def test_a_killed_supervisor_is_restarted_by_the_confined_broker(running):
    d, port = running
    os.kill(d.tree.supervisor_pid(), signal.SIGKILL)
    new = d.tree.wait_for("supervisor_started", where=lambda e: e["start"] == 2)[-1]["pid"]
    d.tree.wait_for("supervisor_ready", where=lambda e: e["pid"] == new)
    assert status_fields(new)["PPid"] == str(d.tree.pid)
    wait_until(lambda: "hello" in http_get(port))


def test_reload_binds_a_new_port_below_1024_with_the_kept_capability(running):
    d, port = running
    low = free_low_port()
    d.rewrite_config(web(port) + f"\n[socket:low]\nhost = 127.0.0.1\nport = {low}\n")
    assert d.call("reloadconfig", waiting=True)["status"] == "ok"
    assert low in {s["port"] for s in d.call("listsockets")["sockets"]}


def test_landlock_keeps_the_broker_out_of_a_directory_the_config_did_not_name_at_start(
    running, workdir
):
    d, port = running
    # Its own account could create a socket here; only Landlock says no.
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    account = pwd.getpwnam(BROKER_USER)
    os.chown(elsewhere, account.pw_uid, account.pw_gid)
    d.rewrite_config(web(port) + f"\n[socket:late]\npath = {elsewhere}/late.sock\n")
    reply = d.call("reloadconfig", waiting=True)
    assert reply["status"] == "error"
    assert os.strerror(errno.EACCES) in reply["reason"]
    assert not os.path.lexists(elsewhere / "late.sock")
    assert "hello" in http_get(port)
