"""Resolve and change paths as root through verified directory fds.

The broker is root and the service user is hostile: whatever that user can
write, it can swap between the broker's check and the broker's act. So a path
is never handed to the kernel as a string. It is walked from "/" one name at a
time, each directory opened (O_PATH, O_NOFOLLOW) relative to the one before and
checked once opened; the broker then creates, opens, changes or removes one
name inside the last directory fd, never by path again. The rules (the
operator's documentation is docs/security.md, "Root and the filesystem"):

* a directory the walk passes through may be writable by the service user only
  if it is sticky, not the user's own, and the next entry is not the user's
  (the kernel then forbids that user to rename or remove the entry: /tmp);
* a symbolic link is followed only when it sits in a directory the walk
  accepted, so only someone other than the service user can have made it
  (/var/run -> /run); a link's text is resolved by the same walk (so a
  /proc magic link is read as text, never followed as the kernel would);
* the directory that holds the file the broker acts on must not be writable
  by the service user at all, sticky or not: the user could take the name
  first. Such a path is refused with an UnsafePathError naming the path, the
  directory and why the user can write it;
* files are created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW); chmod and chown
  act on the inode held by an O_PATH fd (through its /proc/self/fd link, as
  the kernel offers no fchmod for O_PATH); an unlink first checks, with
  fstatat on the directory fd, that the name is still the inode the broker
  made.

"Writable by the service user" means: the user owns it, or its group bits
allow writing and the group is one of the user's (or the directory has a POSIX
ACL, whose mask is those bits), or anyone may write it. The checks apply
whenever the broker runs as another user than its service user (root, as a
rule); a broker that runs as its service user has no more rights to abuse, so
it only keeps the fd discipline.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat

from chapiteau.broker.privileges import ServiceUser
from chapiteau.protocol.records import Record

MAX_SYMLINKS = 40
"""Links followed while resolving one path, as the kernel's own limit."""
ACL_ACCESS = "system.posix_acl_access"
DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(Exception):
    """The service user could redirect what the broker does at this path; the message says how."""


class Directory:
    """A directory opened through verified components; the broker acts inside it by name."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def link(self, name: str) -> str:
        """A path to ``name`` in this very directory, for calls that take no directory fd (bind).

        Resolved through /proc/self/fd/N, the magic link of an fd the broker
        verified, so no rename of the path's directories can redirect it.
        """
        return f"/proc/self/fd/{self.fd}/{name}"

    def stat(self, name: str) -> os.stat_result | None:
        """lstat of ``name`` here; None when nothing has that name."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, name: str, limit: int) -> tuple[bytes, os.stat_result] | None:
        """The first ``limit`` bytes of regular file ``name`` here, and its stat; None when
        nothing has that name. Never a link followed, never a FIFO waited on."""
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"{self.path}/{name}: not a regular file")
            return os.read(fd, limit), st
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the fd once (a second call must not close an fd number reused since)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Entry(Record):
    """A file the broker made or checked: its directory, its name and the inode it must still be."""

    __slots__ = ("directory", "name", "device", "inode")

    def __init__(self, directory: Directory, name: str, device: int, inode: int) -> None:
        self.directory = directory
        self.name = name
        self.device = device
        self.inode = inode

    @classmethod
    def of(cls, directory: Directory, name: str, st: os.stat_result) -> Entry:
        return cls(directory, name, st.st_dev, st.st_ino)

    @property
    def path(self) -> str:
        return os.path.join(self.directory.path, self.name)

    def is_there(self) -> bool:
        """True while the name still is this inode (lstat through the directory fd)."""
        st = self.directory.stat(self.name)
        return st is not None and (st.st_dev, st.st_ino) == (self.device, self.inode)

    def remove(self) -> bool:
        """Unlink the name if it still is this inode (else False); OSError if unlink fails."""
        if not self.is_there():
            return False
        os.unlink(self.name, dir_fd=self.directory.fd)
        return True

    def change(self, mode: int | None = None, uid: int = -1, gid: int = -1) -> None:
        """chmod and/or chown the inode itself, never what its name points at.

        FileNotFoundError when the name is no longer this inode.
        """
        fd = os.open(self.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.directory.fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (self.device, self.inode):
                raise FileNotFoundError(f"{self.path} is no longer the file chapiteau made")
            if mode is not None:
                os.chmod(f"/proc/self/fd/{fd}", mode)
            if uid != -1 or gid != -1:
                os.chown(f"/proc/self/fd/{fd}", uid, gid)
        finally:
            os.close(fd)


def guarded(user: ServiceUser) -> bool:
    """Whether the rules apply: the broker is not the service user (it has rights to abuse)."""
    return os.geteuid() != user.uid


def open_parent(path: str, user: ServiceUser, *, follow: bool = False) -> tuple[Directory, str]:
    """The verified directory that holds ``path``'s last name, and that name.

    With ``follow``, a symbolic link at the last name (in a safe directory) is
    followed, and the directory returned is the one of the file it leads to.
    The directory is not writable by the service user: UnsafePathError if it is.
    """
    directory, name = _walk(path, user, follow)
    try:
        if guarded(user):
            why = _writable_by(os.fstat(directory.fd), directory.fd, user)
            if why:
                raise UnsafePathError(
                    f"{path}: the directory {directory.path} is writable by the service user "
                    f"{user.name!r} ({why}), who could swap {name!r} for a link to any file "
                    f"root can reach; use a directory only root can write (e.g. /run, /var/log)"
                )
    except BaseException:
        directory.close()
        raise
    return directory, name


def append_in(directory: Directory, name: str, mode: int = 0o640) -> int:
    """Open (create if missing) the regular file ``name`` of ``directory`` to append to.

    Never through a link (O_NOFOLLOW), never a FIFO or a device.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY
    # O_NONBLOCK: a FIFO with no reader must not hang the broker at open.
    fd = os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=directory.fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(
            f"{directory.path}/{name}: not a regular file; name a file to append to"
        )
    os.set_blocking(fd, True)
    return fd


def read_small_file(path: str, user: ServiceUser, limit: int = 4096) -> bytes | None:
    """The first ``limit`` bytes of a regular file; None when it does not exist."""
    directory, name = open_parent(path, user, follow=True)
    with directory:
        found = directory.read(name, limit)
    return None if found is None else found[0]


def replace_file(path: str, data: bytes, user: ServiceUser, mode: int = 0o644) -> None:
    """Write ``data`` to a fresh exclusive temporary file beside ``path``, then rename it over."""
    directory, name = open_parent(path, user)
    with directory:
        temporary = f".{name}.{os.urandom(8).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, mode, dir_fd=directory.fd)
        try:
            with contextlib.closing(os.fdopen(fd, "wb", closefd=True)) as output:
                output.write(data)
                output.flush()
                os.fsync(output.fileno())
            os.rename(temporary, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory.fd)
            raise


def make_directory(
    path: str, user: ServiceUser, mode: int, uid: int, gid: int, *, adopt: bool = False
) -> None:
    """Create the directory ``path`` (its parent must exist) as ``uid:gid`` with ``mode``.

    An existing directory is left as it is; with ``adopt`` it is given that
    owner and mode, but only when it is empty or already ``uid``'s (a typo
    naming /etc must not hand /etc to the service user). What is there must be
    a directory: a link is not followed. Owner and mode are set through the
    directory's own fd, whatever the umask.
    """
    parent, name = open_parent(path, user)
    with parent:
        if not name:
            raise UnsafePathError(f"{path}: cannot be the root directory")
        try:
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        except FileExistsError:
            if not adopt:
                return
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd
            )
        except OSError as exc:
            raise UnsafePathError(
                f"{path}: exists and is not a directory ({exc.strerror})"
            ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != uid and os.listdir(fd):
            raise UnsafePathError(
                f"{path}: exists, is not empty and belongs to uid {st.st_uid}; "
                f"chown it to uid {uid} yourself if it is meant for the service user, "
                f"or name a new directory"
            )
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def check_trusted_file(path: str, user: ServiceUser) -> None:
    """Refuse a file the broker trusts (its config) that the service user could change.

    The config decides what root binds and writes, and who the supervisor
    runs as: a service user that can edit it, or swap it, is root.
    """
    directory, name = open_parent(path, user, follow=True)
    with directory:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
        try:
            why = _writable_by(os.fstat(fd), fd, user) if guarded(user) else None
        finally:
            os.close(fd)
    if why:
        raise UnsafePathError(
            f"{path}: writable by the service user {user.name!r} ({why}), who could make root "
            f"bind, write or run what it likes; make it root's, mode 0644 or stricter"
        )


# -- the walk ------------------------------------------------------------------


def _walk(path: str, user: ServiceUser, follow: bool) -> tuple[Directory, str]:
    """Resolve every name of ``path`` but the last; with ``follow``, links at the last too."""
    if not os.path.isabs(path):
        # Relative to the directory chapiteau was started in, as open() would; not
        # normalised, so that ".." after a link means what it means to the kernel.
        path = os.path.join(os.getcwd(), path)
    stack = [Directory(os.open("/", DIRECTORY_FLAGS), "/")]
    pending = _names(path)
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) > 1:
                    stack.pop().close()
                continue
            here = stack[-1]
            last = not pending
            if last and not follow:
                return _take_top(stack), name
            st = here.stat(name)
            if st is None:
                if last:
                    return _take_top(stack), name
                raise UnsafePathError(
                    f"{path}: the directory {os.path.join(here.path, name)} does not exist"
                )
            _check_passage(here, name, st, user, path)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafePathError(f"{path}: too many symbolic links")
                target = os.readlink(name, dir_fd=here.fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        stack.pop().close()
                pending[:0] = _names(target)
                continue
            if last:
                return _take_top(stack), name
            fd = _open_directory_entry(here, name, st)
            stack.append(Directory(fd, os.path.join(here.path, name)))
        return _take_top(stack), ""
    finally:
        for directory in stack:
            directory.close()


def _names(path: str) -> list[str]:
    return [name for name in path.split("/") if name not in ("", ".")]


def _take_top(stack: list[Directory]) -> Directory:
    """Remove the innermost directory from ``stack`` (its fd now belongs to the caller)."""
    return stack.pop()


def _open_directory_entry(
    here: Directory, name: str, expected: os.stat_result | None = None
) -> int:
    """Open ``name`` in ``here`` as a directory, never through a link; check it is ``expected``."""
    path = os.path.join(here.path, name)
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=here.fd)
    except NotADirectoryError:
        raise UnsafePathError(f"{path}: not a directory") from None
    except FileNotFoundError:
        raise UnsafePathError(f"{path}: does not exist") from None
    st = os.fstat(fd)
    if expected is not None and (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise UnsafePathError(f"{path}: changed while chapiteau was opening it")
    return fd


def _check_passage(
    here: Directory, name: str, entry: os.stat_result, user: ServiceUser, path: str
) -> None:
    """Refuse to go through ``here`` to ``name`` when the service user could swap ``name``."""
    if not guarded(user):
        return
    st = os.fstat(here.fd)
    why = _writable_by(st, here.fd, user)
    if why is None:
        return
    sticky_protects = (
        st.st_mode & stat.S_ISVTX and st.st_uid != user.uid and entry.st_uid != user.uid
    )
    if sticky_protects:
        return
    raise UnsafePathError(
        f"{path}: the directory {here.path} is writable by the service user {user.name!r} "
        f"({why}), who could swap {name!r} for a link; use a path whose directories only root "
        f"can write"
    )


def _writable_by(st: os.stat_result, fd: int, user: ServiceUser) -> str | None:
    """Why ``user`` can write the file or directory open as ``fd``, or None when it cannot."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == user.uid:
        return f"it is owned by {user.name}"
    if mode & stat.S_IWOTH:
        return f"mode {mode:04o}: anyone may write"
    if mode & stat.S_IWGRP:
        if st.st_gid == user.gid or st.st_gid in user.groups:
            return f"mode {mode:04o}, group {_group_name(st.st_gid)} is one of {user.name}'s groups"
        if _has_acl(fd):
            return f"mode {mode:04o} with a POSIX ACL that may grant {user.name} write access"
    return None


def _has_acl(fd: int) -> bool:
    try:
        return ACL_ACCESS in os.listxattr(f"/proc/self/fd/{fd}")
    except OSError:
        return False


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
