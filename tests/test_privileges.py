"""Tests for broker/privileges.py: the service user, the access check, the capability set."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import prctl
import pytest

from chapiteau.broker import privileges
from chapiteau.broker.config import BrokerConfig, SocketSpec
from chapiteau.broker.privileges import (
    BASE_CAPABILITIES,
    PrivilegeError,
    ServiceUser,
    check_access,
    drop_privileges,
    needed_capabilities,
    resolve_broker_user,
    resolve_service_user,
    supervisor_files,
)
from chapiteau.protocol.records import replace
from tests.forked import in_child, status_fields
from tests.specs import socket_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build owned trees")

NOBODY = pwd.getpwnam("nobody")
SERVICE = ServiceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid,))
OTHER_GID = 4242


def tree(tmp_path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    """tmp/<dir with mode, owner>/bin/python (0755), under world-searchable parents."""
    directory = tmp_path / "home"
    (directory / "bin").mkdir(parents=True)
    interpreter = directory / "bin" / "python"
    interpreter.write_text("#!/bin/sh\n")
    interpreter.chmod(0o755)
    os.chown(directory, uid, gid)
    directory.chmod(mode)
    return interpreter


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="chapiteau-privileges-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_private_directory_in_the_interpreter_path_is_named(tmp_path):
    interpreter = tree(tmp_path, 0o700)
    with pytest.raises(PrivilegeError) as caught:
        check_access(SERVICE, [(str(interpreter), os.X_OK)])
    message = str(caught.value)
    assert f"cannot reach {interpreter}" in message
    assert f"directory {tmp_path / 'home'} is mode 0700 owned by root:root" in message
    assert "install chapiteau" in message


def test_reachable_tree_passes(tmp_path):
    interpreter = tree(tmp_path, 0o755)
    check_access(SERVICE, [(str(interpreter), os.R_OK | os.X_OK)])


def test_other_search_bit_alone_is_enough_to_reach(tmp_path):
    interpreter = tree(tmp_path, 0o701)
    check_access(SERVICE, [(str(interpreter), os.X_OK)])


def test_group_bits_apply_to_the_owning_group(tmp_path):
    interpreter = tree(tmp_path, 0o750, gid=NOBODY.pw_gid)
    check_access(SERVICE, [(str(interpreter), os.X_OK)])


def test_group_bits_do_not_apply_to_another_group(tmp_path):
    interpreter = tree(tmp_path, 0o750, gid=OTHER_GID)
    with pytest.raises(PrivilegeError, match=r"is mode 0750 owned by root:"):
        check_access(SERVICE, [(str(interpreter), os.X_OK)])


def test_owner_bits_apply_to_the_owner_not_the_other_bits(tmp_path):
    interpreter = tree(tmp_path, 0o075, uid=NOBODY.pw_uid, gid=OTHER_GID)
    with pytest.raises(PrivilegeError, match="is mode 0075 owned by nobody:"):
        check_access(SERVICE, [(str(interpreter), os.X_OK)])


def test_unreadable_file_is_named(tmp_path):
    config = tmp_path / "circus.ini"
    config.write_text("[circus]\n")
    config.chmod(0o600)
    with pytest.raises(PrivilegeError, match=rf"cannot use {config}: file {config} is mode 0600"):
        check_access(SERVICE, [(str(config), os.R_OK)])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PrivilegeError, match="No such file or directory"):
        check_access(SERVICE, [(str(tmp_path / "missing"), os.R_OK)])


def test_root_service_user_is_not_checked(tmp_path):
    interpreter = tree(tmp_path, 0o700)
    check_access(ServiceUser("root", 0, 0, (0,)), [(str(interpreter), os.X_OK)])


def test_supervisor_files_include_interpreter_packages_and_config_files():
    config = broker_config({}, files=("/etc/a.ini", "/etc/b.ini"))
    needs = dict(supervisor_files(config))
    assert needs[sys.executable] == os.X_OK
    assert needs["/etc/a.ini"] == needs["/etc/b.ini"] == os.R_OK
    assert any(path.endswith("zmq") for path in needs)


def test_supervisor_command_override_is_the_program_checked():
    config = replace(broker_config({}), supervisor_command=("sh", "-c", "exit 0"))
    needs = dict(supervisor_files(config))
    assert needs[shutil.which("sh")] == os.X_OK
    assert sys.executable not in needs
    assert not any(path.endswith("zmq") for path in needs)


def test_unknown_user_says_how_to_fix():
    with pytest.raises(PrivilegeError, match=r"\[broker\] user = nosuchuser: no such user; create"):
        resolve_service_user("nosuchuser", None)


def test_unknown_group_is_an_error():
    with pytest.raises(PrivilegeError, match=r"\[broker\] group = nosuchgroup: no such group"):
        resolve_service_user("nobody", "nosuchgroup")


def test_default_user_of_root_is_nobody():
    user = resolve_service_user(None, None)
    assert (user.name, user.uid, user.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)


def test_numeric_user_and_group_are_accepted():
    user = resolve_service_user(str(NOBODY.pw_uid), str(NOBODY.pw_gid))
    assert (user.uid, user.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)


def broker_config(sockets: dict[str, SocketSpec], files: tuple[str, ...] = ()) -> BrokerConfig:
    return BrokerConfig(
        path="/etc/c.ini",
        user=None,
        group=None,
        supervisor_command=None,
        socket_path=None,
        orphan_timeout=1.0,
        sockets=sockets,
        files=files,
    )


def test_plain_sockets_need_no_net_raw():
    config = broker_config({"web": socket_spec(port=80)})
    assert needed_capabilities(config) == BASE_CAPABILITIES
    assert "net_raw" not in BASE_CAPABILITIES


def test_interface_needs_net_raw():
    config = broker_config({"web": socket_spec(port=80), "lo": socket_spec("lo", interface="lo")})
    assert needed_capabilities(config) == (*BASE_CAPABILITIES, "net_raw")


def test_raw_socket_needs_net_raw():
    config = broker_config({"raw": socket_spec("raw", type=socket.SOCK_RAW)})
    assert "net_raw" in needed_capabilities(config)


def dropped(capabilities: tuple[str, ...], broker: ServiceUser | None = None) -> dict[str, str]:
    """/proc/self/status of a child after drop_privileges."""

    def child() -> str:
        drop_privileges(capabilities, broker)
        return json.dumps(status_fields())

    code, output = in_child(child)
    assert code == 0, output
    return json.loads(output)


def test_drop_privileges_limits_every_set_and_sets_no_new_privs():
    fields = dropped(("net_bind_service", "setuid"))
    expected = (1 << 10) | (1 << 7)
    assert int(fields["CapBnd"], 16) == expected
    assert int(fields["CapEff"], 16) == expected
    assert int(fields["CapPrm"], 16) == expected
    assert fields["NoNewPrivs"] == "1"


def test_drop_privileges_switches_to_the_broker_account_keeping_the_capabilities():
    broker = ServiceUser("broker", 4243, 4244, (4244, OTHER_GID))
    fields = dropped(BASE_CAPABILITIES, broker)
    assert fields["Uid"].split() == ["4243"] * 4
    assert fields["Gid"].split() == ["4244"] * 4
    assert sorted(map(int, fields["Groups"].split())) == [OTHER_GID, 4244]
    expected = (1 << prctl.CAP_KILL) | (1 << prctl.CAP_NET_BIND_SERVICE)
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[key], 16) == expected, key
    assert int(fields["CapInh"], 16) == int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1"


def test_without_its_account_the_broker_keeps_uid_0_silently_resolved_as_none(monkeypatch):
    monkeypatch.setattr(privileges, "DEFAULT_BROKER_USER", "chapiteau-no-such-account")
    assert resolve_broker_user(None, SERVICE) is None


def test_a_configured_broker_user_that_does_not_exist_is_an_error():
    with pytest.raises(
        PrivilegeError, match=r"\[broker\] broker_user = no-such-user: no such user"
    ):
        resolve_broker_user("no-such-user", SERVICE)


def test_the_broker_user_cannot_be_the_service_user():
    with pytest.raises(PrivilegeError, match="its own account"):
        resolve_broker_user("nobody", SERVICE)


def test_root_as_broker_user_means_keep_uid_0():
    assert resolve_broker_user("root", SERVICE) is None
    assert resolve_broker_user("0", SERVICE) is None


def test_the_broker_account_gets_the_service_group_to_read_the_config_again():
    daemon = pwd.getpwnam("daemon")
    broker = resolve_broker_user("daemon", SERVICE)
    assert broker is not None
    assert (broker.uid, broker.gid) == (daemon.pw_uid, daemon.pw_gid)
    assert set(broker.groups) == {daemon.pw_gid, SERVICE.gid}
