"""Tests for broker/binding.py and broker/socket_table.py: real sockets in temporary directories."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.binding import (
    BindError,
    BoundSocket,
    bind_master,
    bind_reuseport_sibling,
)
from chapiteau.broker.config import SocketSpec
from chapiteau.broker.socket_table import ReloadError, apply_reload, bind_all, close_all
from tests.broker_events import broker_events
from tests.specs import USER
from tests.specs import socket_spec as spec

TCP_LISTEN = "0A"
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def unix(path: Path, **changes: object) -> SocketSpec:
    return spec(family=socket.AF_UNIX, path=str(path), **changes)


@pytest.fixture
def opened() -> Iterator[list[BoundSocket]]:
    """Every BoundSocket a test registers here is closed afterwards."""
    sockets: list[BoundSocket] = []
    yield sockets
    close_all(sockets)


def keep(opened: list[BoundSocket], bound: BoundSocket) -> BoundSocket:
    opened.append(bound)
    return bound


def tcp_state(sock: socket.socket) -> str | None:
    """The /proc/net/tcp state of ``sock`` (0A = listening); None when bound only.

    A TCP socket that is bound but neither listening nor connected is in no
    table of /proc/net: the kernel lists only hashed sockets.
    """
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] == inode:
                    return fields[3]
    return None


def test_inet_socket_is_bound_and_listening(opened):
    bound = keep(opened, bind_master(spec(), USER))
    host, port = bound.sock.getsockname()
    assert host == "127.0.0.1" and port > 0
    assert tcp_state(bound.sock) == TCP_LISTEN
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_info_reports_the_real_port(opened):
    bound = keep(opened, bind_master(spec(), USER))
    info = bound.info()
    assert info.port == bound.sock.getsockname()[1] and info.host == "127.0.0.1"
    assert info.inode == os.fstat(bound.fd).st_ino


def test_inet6_socket_binds_to_loopback(opened):
    bound = keep(opened, bind_master(spec(family=socket.AF_INET6, host="::1"), USER))
    assert bound.sock.family == socket.AF_INET6
    port = bound.sock.getsockname()[1]
    with socket.create_connection(("::1", port), timeout=5):
        pass


def test_reuseaddr_is_set(opened):
    bound = keep(opened, bind_master(spec(), USER))
    assert bound.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_socket_is_non_blocking_by_default(opened):
    assert keep(opened, bind_master(spec(), USER)).sock.getblocking() is False


def test_blocking_true_gives_a_blocking_socket(opened):
    assert keep(opened, bind_master(spec(blocking=True), USER)).sock.getblocking() is True


def test_backlog_is_the_listen_queue_length(opened):
    bound = keep(opened, bind_master(spec(backlog=7), USER))
    port = bound.sock.getsockname()[1]
    listing = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # ss prints State, Recv-Q, Send-Q (the backlog for a listener), Local, Peer.
    assert listing[2] == "7", listing


def test_datagram_socket_is_bound_without_listen(opened):
    bound = keep(opened, bind_master(spec(type=socket.SOCK_DGRAM), USER))
    assert bound.sock.getsockname()[1] > 0


def test_port_in_use_is_a_clear_error(opened):
    first = keep(opened, bind_master(spec(), USER))
    port = first.sock.getsockname()[1]
    with pytest.raises(BindError) as caught:
        bind_master(spec(port=port), USER)
    message = str(caught.value)
    assert message.startswith(f"/etc/circus.ini:socket:web: cannot bind 127.0.0.1:{port}: ")
    assert "address already in use" in message and f"sport = :{port}" in message


def test_unknown_host_is_a_clear_error():
    with pytest.raises(BindError, match=r"socket:web: cannot resolve host 'no\.such\.host\."):
        bind_master(spec(host="no.such.host.invalid"), USER)


def test_foreign_address_is_a_clear_error():
    with pytest.raises(BindError, match="no local interface has this address"):
        bind_master(spec(host="192.0.2.1"), USER)


def test_interface_binds_to_that_device(opened):
    bound = keep(opened, bind_master(spec(interface="lo"), USER))
    device = bound.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
    assert device.rstrip(b"\0") == b"lo"


def test_unknown_interface_is_a_clear_error():
    with pytest.raises(BindError, match="cannot bind to interface 'nosuch0': No such device"):
        bind_master(spec(interface="nosuch0"), USER)


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o700), (0o000, 0o777), (0o022, 0o755)])
def test_unix_socket_mode_follows_umask(tmp_path, opened, umask, mode):
    path = tmp_path / "web.sock"
    keep(opened, bind_master(unix(path, umask=umask), USER))
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode


def test_unix_socket_umask_does_not_leak_into_the_process(tmp_path, opened):
    before = os.umask(0o022)
    try:
        keep(opened, bind_master(unix(tmp_path / "web.sock", umask=0), USER))
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_unix_socket_accepts_connections(tmp_path, opened):
    path = tmp_path / "web.sock"
    keep(opened, bind_master(unix(path), USER))
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))


def test_live_socket_file_is_an_error_without_replace(tmp_path):
    path = tmp_path / "web.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        inode = os.lstat(path).st_ino
        with pytest.raises(BindError, match=r"something is listening there .* set replace = true"):
            bind_master(unix(path), USER)
        assert os.lstat(path).st_ino == inode


def test_live_socket_file_is_replaced_with_replace(tmp_path, opened):
    path = tmp_path / "web.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        keep(opened, bind_master(unix(path, replace=True), USER))
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))


def test_stale_socket_file_of_a_previous_run_is_replaced(tmp_path, opened):
    path = tmp_path / "web.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    keep(opened, bind_master(unix(path), USER))
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))


def test_regular_file_is_never_removed_even_with_replace(tmp_path):
    path = tmp_path / "web.sock"
    path.write_text("precious")
    with pytest.raises(BindError, match="exists and is not a socket; refusing to remove it"):
        bind_master(unix(path, replace=True), USER)
    assert path.read_text() == "precious"


def test_symlink_is_never_followed_nor_removed(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    path = tmp_path / "web.sock"
    path.symlink_to(target)
    with pytest.raises(BindError, match="exists and is not a socket"):
        bind_master(unix(path, replace=True), USER)
    assert path.is_symlink() and os.readlink(path) == str(target)
    assert target.read_text() == "precious"


def test_symlink_to_a_socket_is_not_replaced(tmp_path):
    real = tmp_path / "real.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(real))
    link = tmp_path / "web.sock"
    link.symlink_to(real)
    inode = os.lstat(real).st_ino
    with pytest.raises(BindError, match="exists and is not a socket"):
        bind_master(unix(link, replace=True), USER)
    assert link.is_symlink() and os.lstat(real).st_ino == inode


def test_dangling_symlink_is_not_followed(tmp_path):
    path = tmp_path / "web.sock"
    path.symlink_to(tmp_path / "elsewhere.sock")
    with pytest.raises(BindError, match="exists and is not a socket"):
        bind_master(unix(path, replace=True), USER)
    assert not (tmp_path / "elsewhere.sock").exists()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(
        BindError, match=r"cannot bind .*/no/web.sock: the directory .*/no does not exist"
    ):
        bind_master(unix(tmp_path / "no" / "web.sock"), USER)


def test_close_removes_its_own_unix_path(tmp_path):
    path = tmp_path / "web.sock"
    bind_master(unix(path), USER).close()
    assert not os.path.lexists(path)


def test_close_keeps_a_path_that_is_no_longer_its_file(tmp_path):
    path = tmp_path / "web.sock"
    bound = bind_master(unix(path), USER)
    os.unlink(path)
    path.write_text("someone else's")
    bound.close()
    assert path.read_text() == "someone else's"


def test_close_keeps_a_socket_file_that_replaced_it(tmp_path, opened):
    path = tmp_path / "web.sock"
    first = bind_master(unix(path), USER)
    second = keep(opened, bind_master(unix(path, replace=True), USER))
    first.close()
    assert second.path is not None and os.lstat(path).st_ino == second.path.inode


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i path`` for the duration: even root cannot unlink inside it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
        try:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_IMMUTABLE_FL))
        except OSError as exc:
            pytest.skip(f"cannot make {path} immutable here: {exc.strerror}")
        try:
            yield
        finally:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


def test_close_survives_a_socket_file_it_cannot_remove(tmp_path):
    path = tmp_path / "web.sock"
    bound = bind_master(unix(path), USER)
    with immutable(tmp_path), broker_events() as logs:
        bound.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert [e["event"] for e in logs] == ["socket_file_not_removed"]
    assert logs[0]["path"] == str(path) and logs[0]["error"] == "Operation not permitted"


def test_reload_removing_a_socket_whose_file_cannot_be_removed_goes_on(tmp_path):
    path = tmp_path / "gone.sock"
    table = bind_all([unix(path, name="gone"), spec(name="kept")], USER)
    try:
        with immutable(tmp_path):
            result = apply_reload(table, {"kept": spec(name="kept")}, USER)
        assert result.removed == ("gone",) and list(table) == ["kept"]
    finally:
        close_all(table.values())


def test_reuseport_master_is_bound_but_not_listening(opened):
    master = keep(opened, bind_master(spec(so_reuseport=True), USER))
    assert master.sock.getsockname()[1] > 0
    assert tcp_state(master.sock) != TCP_LISTEN


def test_reuseport_siblings_share_the_master_port_and_listen(opened):
    master = keep(opened, bind_master(spec(so_reuseport=True, port=0), USER))
    port = master.sock.getsockname()[1]
    siblings = [keep(opened, bind_reuseport_sibling(master)) for _ in range(3)]
    assert {s.sock.getsockname()[1] for s in siblings} == {port}
    assert len({os.fstat(s.fd).st_ino for s in [master, *siblings]}) == 4
    assert all(tcp_state(s.sock) == TCP_LISTEN for s in siblings)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_reuseport_sibling_info_reports_reuseport(opened):
    master = keep(opened, bind_master(spec(so_reuseport=True), USER))
    info = keep(opened, bind_reuseport_sibling(master)).info()
    assert info.reuseport and info.port == master.sock.getsockname()[1]


def test_reuseport_inet6_siblings_share_the_port(opened):
    master = keep(
        opened, bind_master(spec(family=socket.AF_INET6, host="::1", so_reuseport=True), USER)
    )
    sibling = keep(opened, bind_reuseport_sibling(master))
    assert sibling.sock.getsockname()[:2] == master.sock.getsockname()[:2]


def test_bind_all_is_all_or_nothing(tmp_path):
    path = tmp_path / "a.sock"
    taken = bind_master(spec(name="taken"), USER)
    try:
        with pytest.raises(BindError):
            bind_all([unix(path, name="a"), spec(name="b", port=taken.sock.getsockname()[1])], USER)
        assert not os.path.lexists(path)
    finally:
        taken.close()


def test_reload_adds_removes_and_rebinds(tmp_path):
    table = bind_all([spec(name="keep"), spec(name="gone"), spec(name="moved")], USER)
    try:
        kept = table["keep"].sock
        result = apply_reload(
            table,
            {
                "keep": table["keep"].spec,
                "moved": spec(name="moved", host="127.0.0.2"),
                "new": spec(name="new"),
            },
            USER,
        )
        assert result.added == ("new",) and result.removed == ("gone",)
        assert result.changed == ("moved",)
        assert set(table) == {"keep", "moved", "new"}
        assert table["keep"].sock is kept
        assert table["moved"].sock.getsockname()[0] == "127.0.0.2"
    finally:
        close_all(table.values())


def test_failed_reload_leaves_the_table_untouched(tmp_path):
    blocker = bind_master(spec(name="blocker"), USER)
    table = bind_all([spec(name="a"), spec(name="b")], USER)
    try:
        before = dict(table)
        fds = {name: bound.fd for name, bound in table.items()}
        with pytest.raises(ReloadError, match="address already in use"):
            apply_reload(
                table,
                {
                    "a": spec(name="a", host="127.0.0.3"),
                    "c": unix(tmp_path / "c.sock", name="c"),
                    "d": spec(name="d", port=blocker.sock.getsockname()[1]),
                },
                USER,
            )
        assert table == before
        assert {name: bound.fd for name, bound in table.items()} == fds
        assert all(tcp_state(bound.sock) == TCP_LISTEN for bound in table.values())
        assert not os.path.lexists(tmp_path / "c.sock")
    finally:
        close_all(table.values())
        blocker.close()


def test_backlog_only_change_is_applied_in_place():
    table = bind_all([spec(backlog=5)], USER)
    try:
        sock = table["web"].sock
        port = sock.getsockname()[1]
        result = apply_reload(table, {"web": spec(backlog=9, blocking=True)}, USER)
        assert result.changed == ("web",)
        assert table["web"].sock is sock and sock.getblocking() is True
        assert table["web"].spec.backlog == 9
        listing = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert listing[2] == "9", listing
    finally:
        close_all(table.values())


def test_reload_of_a_unix_umask_changes_the_mode_in_place(tmp_path):
    path = tmp_path / "web.sock"
    table = bind_all([unix(path, umask=0o077)], USER)
    try:
        sock = table["web"].sock
        result = apply_reload(table, {"web": unix(path, umask=0o022)}, USER)
        assert result.changed == ("web",)
        assert table["web"].sock is sock
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        close_all(table.values())


def test_reload_does_not_chmod_a_path_that_is_no_longer_its_socket(tmp_path):
    path = tmp_path / "web.sock"
    table = bind_all([unix(path, umask=0o077)], USER)
    try:
        os.unlink(path)
        path.write_text("someone else's")
        path.chmod(0o600)
        apply_reload(table, {"web": unix(path, umask=0o000)}, USER)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        close_all(table.values())


def test_unsupported_socket_kind_is_a_clear_error():
    with pytest.raises(BindError, match=r"socket:web: cannot create a AF_INET SOCK_RAW socket"):
        bind_master(spec(type=socket.SOCK_RAW, proto=255 + 1000), USER)


NOBODY_UID = pwd.getpwnam("nobody").pw_uid
NOGROUP_GID = grp.getgrnam("nogroup").gr_gid
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user: root")


@needs_root
def test_unix_socket_gets_its_owner_group_and_mode(tmp_path, opened):
    path = tmp_path / "web.sock"
    keep(opened, bind_master(unix(path, owner=NOBODY_UID, group=NOGROUP_GID, mode=0o660), USER))
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY_UID, NOGROUP_GID, 0o660)


def test_mode_wins_over_the_umask_default(tmp_path, opened):
    path = tmp_path / "web.sock"
    keep(opened, bind_master(unix(path, mode=0o666), USER))
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666


def test_owner_alone_keeps_the_group_and_the_umask_mode(tmp_path, opened):
    path = tmp_path / "web.sock"
    keep(opened, bind_master(unix(path, owner=os.geteuid()), USER))
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), os.getegid(), 0o700)


def test_a_refused_chown_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    def refuse(target: object, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "chown", refuse)
    path = tmp_path / "web.sock"
    with pytest.raises(BindError) as caught:
        bind_master(unix(path, owner=12345), USER)
    assert str(caught.value) == (
        f"/etc/circus.ini:socket:web: cannot set the owner, group or mode of {path}: "
        "Operation not permitted; only root can give a file to another user"
    )
    assert not os.path.lexists(path)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, {"owner": 0}),
        ({"group": 0}, {"group": 1}),
        ({"owner": 0}, {}),
        ({"owner": 0, "mode": 0o660}, {"owner": 0, "mode": 0o660, "type": socket.SOCK_DGRAM}),
    ],
    ids=["owner-added", "group-changed", "owner-removed", "rebound"],
)
def test_a_reload_that_needs_a_chown_is_refused_before_binding(tmp_path, before, after):
    path = tmp_path / "web.sock"
    table = bind_all([unix(path, **before)], USER)
    try:
        entry = table["web"]
        new = tmp_path / "new.sock"
        with pytest.raises(ReloadError) as caught:
            apply_reload(table, {"web": unix(path, **after), "new": unix(new, name="new")}, USER)
        assert str(caught.value) == (
            "/etc/circus.ini:socket:web: owner and group of a unix socket are applied at "
            "start only (the confined broker cannot chown); restart chapiteau to apply them"
        )
        assert table == {"web": entry} and not os.path.lexists(new)
    finally:
        close_all(table.values())


def test_a_reload_adding_an_owned_socket_is_refused(tmp_path):
    with pytest.raises(ReloadError, match=r"socket:new: owner and group .* at start only"):
        apply_reload({}, {"new": unix(tmp_path / "new.sock", name="new", group=0)}, USER)
    assert not os.path.lexists(tmp_path / "new.sock")


def test_a_reload_keeping_the_owner_changes_the_mode_without_chown(tmp_path, monkeypatch):
    path = tmp_path / "web.sock"
    owned = {"owner": os.geteuid(), "group": os.getegid()}
    table = bind_all([unix(path, mode=0o600, **owned)], USER)
    try:

        def refuse(target: object, uid: int, gid: int) -> None:
            raise AssertionError("chown on reload")

        monkeypatch.setattr(os, "chown", refuse)
        result = apply_reload(table, {"web": unix(path, mode=0o660, backlog=5, **owned)}, USER)
        assert result.changed == ("web",)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    finally:
        close_all(table.values())


def test_a_reload_binds_a_new_socket_with_its_mode(tmp_path):
    table: dict[str, BoundSocket] = {}
    try:
        apply_reload(table, {"web": unix(tmp_path / "web.sock", mode=0o666)}, USER)
        assert stat.S_IMODE(os.lstat(tmp_path / "web.sock").st_mode) == 0o666
    finally:
        close_all(table.values())
