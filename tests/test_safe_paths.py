"""Tests for broker/safe_paths.py: which directories root trusts, and acting through their fds.

The rules guard against the service user (nobody), so these tests need root
to give directories to nobody; they are skipped otherwise.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

import pytest

from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.safe_paths import (
    ACL_ACCESS,
    Entry,
    UnsafePathError,
    append_in,
    check_trusted_file,
    make_directory,
    open_parent,
    read_small_file,
    replace_file,
)
from tests.specs import USER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives directories to nobody: root")

ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x04, 0x08, 0x10, 0x20


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A root-owned directory that nobody can enter but not write (like /run)."""
    tmp_path.chmod(0o755)
    return tmp_path


def directory(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def refused(path: Path, **options: bool) -> str:
    with pytest.raises(UnsafePathError) as caught:
        open_parent(str(path), USER, **options)
    return str(caught.value)


def resolved(path: Path, **options: bool) -> tuple[str, str]:
    found, name = open_parent(str(path), USER, **options)
    with found:
        return found.path, name


def test_a_root_directory_is_trusted(base):
    assert resolved(base / "web.sock") == (str(base), "web.sock")


def test_a_directory_the_service_user_owns_is_refused_with_path_directory_and_reason(base):
    mine = directory(base / "mine", 0o755, USER.uid)
    message = refused(mine / "web.sock")
    assert message.startswith(f"{mine}/web.sock: the directory {mine} is writable by the ")
    assert "service user 'nobody' (it is owned by nobody)" in message


def test_a_directory_writable_by_a_group_of_the_service_user_is_refused(base):
    shared = directory(base / "shared", 0o775, 0, USER.gid)
    assert "group nogroup is one of nobody's groups" in refused(shared / "x")


def test_a_directory_writable_by_another_group_is_trusted(base):
    other = directory(base / "other", 0o775, 0, 0)
    assert resolved(other / "x") == (str(other), "x")


def test_a_world_writable_directory_is_refused_even_when_sticky(base):
    public = directory(base / "public", 0o1777)
    assert "mode 1777: anyone may write" in refused(public / "x")


def test_a_sticky_directory_may_be_crossed_to_a_root_entry(base):
    public = directory(base / "public", 0o1777)
    inside = directory(public / "root", 0o755)
    assert resolved(inside / "x") == (str(inside), "x")


def test_a_sticky_directory_may_not_be_crossed_to_an_entry_of_the_service_user(base):
    public = directory(base / "public", 0o1777)
    theirs = directory(public / "theirs", 0o755, USER.uid)
    assert "who could swap 'theirs'" in refused(theirs / "x")


def test_a_world_writable_directory_without_sticky_bit_may_not_be_crossed(base):
    public = directory(base / "public", 0o777)
    inside = directory(public / "root", 0o755)
    assert f"the directory {public} is writable" in refused(inside / "x")


def test_a_group_writable_directory_with_an_acl_is_refused(base):
    shared = directory(base / "shared", 0o775, 0, 0)
    entries = [
        (ACL_USER_OBJ, 7, 0xFFFFFFFF),
        (ACL_GROUP_OBJ, 7, 0xFFFFFFFF),
        (ACL_GROUP, 7, 4321),
        (ACL_MASK, 7, 0xFFFFFFFF),
        (ACL_OTHER, 5, 0xFFFFFFFF),
    ]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(shared, ACL_ACCESS, acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACL here: {exc.strerror}")
    assert "POSIX ACL" in refused(shared / "x")


def test_a_link_in_a_trusted_directory_is_followed(base):
    real = directory(base / "real", 0o755)
    (base / "link").symlink_to(real)
    assert resolved(base / "link" / "x") == (str(real), "x")


def test_a_relative_link_with_dot_dot_is_followed(base):
    real = directory(base / "real", 0o755)
    sub = directory(base / "sub", 0o755)
    (sub / "link").symlink_to("../real")
    assert resolved(sub / "link" / "x") == (str(real), "x")


def test_a_link_planted_in_a_directory_of_the_service_user_is_not_followed(base):
    mine = directory(base / "mine", 0o755, USER.uid)
    root_only = directory(base / "root-only", 0o700)
    (mine / "sub").symlink_to(root_only)
    assert "who could swap 'sub' for a link" in refused(mine / "sub" / "web.sock")


def test_a_link_at_the_last_name_is_followed_only_when_asked(base):
    real = directory(base / "real", 0o755)
    (base / "app.log").symlink_to(real / "app.log")
    assert resolved(base / "app.log") == (str(base), "app.log")
    assert resolved(base / "app.log", follow=True) == (str(real), "app.log")


def test_a_link_loop_is_an_error(base):
    (base / "a").symlink_to(base / "b")
    (base / "b").symlink_to(base / "a")
    assert "too many symbolic links" in refused(base / "a" / "x")


def test_a_missing_directory_is_named(base):
    assert f"the directory {base}/no does not exist" in refused(base / "no" / "x")


def test_a_file_in_the_middle_is_not_a_directory(base):
    (base / "file").write_text("")
    assert f"{base}/file: not a directory" in refused(base / "file" / "x")


def test_a_relative_path_is_relative_to_the_current_directory(base, monkeypatch):
    real = directory(base / "real", 0o755)
    monkeypatch.chdir(real)
    assert resolved(Path("..") / "real" / "web.sock") == (str(real), "web.sock")


def open_for_append(path: str, user: ServiceUser) -> int:
    """How the log file is opened: its directory walked, then the file appended to."""
    directory, name = open_parent(path, user, follow=True)
    with directory:
        return append_in(directory, name)


def test_append_creates_a_private_file_and_appends(base):
    for line in (b"one\n", b"two\n"):
        fd = open_for_append(str(base / "app.log"), USER)
        os.write(fd, line)
        os.close(fd)
    assert (base / "app.log").read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(os.stat(base / "app.log").st_mode) == 0o640


def test_append_refuses_a_fifo_without_blocking(base):
    os.mkfifo(base / "app.log")
    with pytest.raises(OSError):
        open_for_append(str(base / "app.log"), USER)


def test_append_refuses_a_directory_of_the_service_user(base):
    mine = directory(base / "mine", 0o755, USER.uid)
    with pytest.raises(UnsafePathError, match="writable by the service user"):
        open_for_append(str(mine / "app.log"), USER)


def test_read_small_file_reads_a_file_and_none_when_missing(base):
    (base / "pid").write_text("123\n")
    assert read_small_file(str(base / "pid"), USER) == b"123\n"
    assert read_small_file(str(base / "missing"), USER) is None


def test_replace_file_renames_over_a_link_without_following_it(base):
    secret = base / "secret"
    secret.write_text("root only\n")
    (base / "app.pid").symlink_to(secret)
    replace_file(str(base / "app.pid"), b"42\n", USER)
    assert not (base / "app.pid").is_symlink() and (base / "app.pid").read_text() == "42\n"
    assert secret.read_text() == "root only\n"
    assert sorted(p.name for p in base.iterdir()) == ["app.pid", "secret"]


def test_make_directory_sets_owner_and_mode_whatever_the_umask(base):
    previous = os.umask(0o077)
    try:
        make_directory(str(base / "run"), USER, 0o750, USER.uid, USER.gid)
    finally:
        os.umask(previous)
    st = os.stat(base / "run")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, USER.uid, USER.gid)


def test_make_directory_leaves_an_existing_directory_unless_adopting(base):
    existing = directory(base / "run", 0o700)
    make_directory(str(existing), USER, 0o750, USER.uid, USER.gid)
    assert os.stat(existing).st_uid == 0
    make_directory(str(existing), USER, 0o750, USER.uid, USER.gid, adopt=True)
    assert os.stat(existing).st_uid == USER.uid


def test_make_directory_never_adopts_a_non_empty_directory_of_someone_else(base):
    etc = directory(base / "etc", 0o755)
    (etc / "passwd").write_text("root:x:0:0\n")
    with pytest.raises(UnsafePathError, match="exists, is not empty and belongs to uid 0"):
        make_directory(str(etc), USER, 0o750, USER.uid, USER.gid, adopt=True)
    assert os.stat(etc).st_uid == 0


def test_make_directory_does_not_follow_a_link(base):
    target = directory(base / "target", 0o700)
    (base / "run").symlink_to(target)
    with pytest.raises(UnsafePathError, match="exists and is not a directory"):
        make_directory(str(base / "run"), USER, 0o750, USER.uid, USER.gid, adopt=True)
    assert os.stat(target).st_uid == 0


def bound_entry(base: Path) -> tuple[socket.socket, Entry]:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(base / "web.sock"))
    directory_, name = open_parent(str(base / "web.sock"), USER)
    return sock, Entry.of(directory_, name, os.lstat(base / "web.sock"))


def test_an_entry_is_removed_only_while_it_is_the_same_inode(base):
    sock, entry = bound_entry(base)
    with sock, entry.directory:
        os.unlink(base / "web.sock")
        (base / "web.sock").write_text("someone else's")
        assert entry.remove() is False
        assert (base / "web.sock").read_text() == "someone else's"


def test_an_entry_changes_its_own_inode_never_a_link_put_in_its_place(base):
    secret = base / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    sock, entry = bound_entry(base)
    with sock, entry.directory:
        entry.change(mode=0o640, gid=USER.gid)
        st = os.lstat(base / "web.sock")
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, USER.gid)
        os.rename(base / "web.sock", base / "moved.sock")
        (base / "web.sock").symlink_to(secret)
        with pytest.raises(FileNotFoundError, match="no longer the file chapiteau made"):
            entry.change(mode=0o777, gid=USER.gid)
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)


def test_a_config_file_the_service_user_can_write_is_refused(base):
    config = base / "circus.ini"
    config.write_text("[circus]\n")
    config.chmod(0o644)
    check_trusted_file(str(config), USER)
    os.chown(config, USER.uid, 0)
    with pytest.raises(
        UnsafePathError, match=r"circus\.ini: writable by the service user 'nobody'"
    ):
        check_trusted_file(str(config), USER)
