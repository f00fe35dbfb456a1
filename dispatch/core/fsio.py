"""The file primitives every module uses, on the share and in node-local state: create a
file exclusively, replace one atomically, read a file someone else wrote without trusting
it, append. Nothing here follows a symbolic link at the last component."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from dispatch.core.errors import Rejection
from dispatch.core.wire import MAX_FILE_BYTES


def write_new(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Create `path` (it must not exist) with all of `data`, synced unless it need not
    outlive a crash (`durable=False`: a record of a process, in /run or about a pid). A full
    share refuses the data after it let the name in: then nothing is left behind (every retry
    would add another empty file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True, durable: bool = True
) -> bool:
    """Write then rename, so readers see the old file or the whole new one. The temp name ends
    in `.tmp`, which every reader of the share ignores. With `overwrite=False` an existing
    target is left alone and False returned (link(2) is not available on every share, so this
    check-then-rename relies on one writer per target, which the layout guarantees)."""
    tmp = path.with_name(f".{path.name[:200]}.{os.urandom(4).hex()}.tmp")
    write_new(tmp, data, mode, durable=durable)
    if not overwrite and os.path.lexists(path):
        os.unlink(tmp)
        return False
    os.rename(tmp, path)
    return True


def link_new(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` whole or not at all: written aside, then linked into place (link(2)
    fails if the name exists). A crash at any point leaves no file or a whole one, never an
    empty one. False when the name was taken. Node-local state only (shares may lack link)."""
    tmp = path.with_name(f".{path.name[:200]}.{os.urandom(4).hex()}.tmp")
    write_new(tmp, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
# Errors that say the filesystem (FUSE, older NFS) lacks renameat2 flags or hard links.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV}


def _renameat2(src: str, dst: str, src_dir_fd: int | None, dst_dir_fd: int | None) -> bool:
    """renameat2(RENAME_NOREPLACE); False when this kernel, libc or filesystem lacks it."""
    import ctypes  # here: 6 M instructions, and most hops never move a file

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    src_fd = _AT_FDCWD if src_dir_fd is None else src_dir_fd
    dst_fd = _AT_FDCWD if dst_dir_fd is None else dst_dir_fd
    if call(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_new(
    src: str | Path,
    dst: str | Path,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Move `src` to `dst` without ever replacing an entry at `dst` (FileExistsError then):
    renameat2(RENAME_NOREPLACE) where the filesystem has it, else link(2) and unlink (a
    symlink is linked as itself), else a check then rename, which relies on one writer per
    name as the layout arranges."""
    src, dst = os.fspath(src), os.fspath(dst)
    if _renameat2(src, dst, src_dir_fd, dst_dir_fd):
        return
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        # A directory, or a share without hard links.
        try:
            os.lstat(dst, dir_fd=dst_dir_fd)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        raise FileExistsError(errno.EEXIST, "entry exists", dst) from None
    os.unlink(src, dir_fd=src_dir_fd)


def read_regular(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a file someone else put on the share without trusting it: no symlinks, no FIFOs
    (O_NONBLOCK keeps an open on one from hanging), no directories, nothing over `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejection("symlink", "entry is a symbolic link") from None
        if exc.errno == errno.ENOENT:
            raise
        raise Rejection("unreadable", f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "directory" if stat.S_ISDIR(info.st_mode) else "special file"
            raise Rejection("not_regular", f"entry is a {kind}, not a regular file")
        if info.st_size > limit:
            raise Rejection("too_large", f"file is {info.st_size} bytes, over {limit}")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, 1 << 20))
            except OSError as exc:
                raise Rejection("unreadable", f"cannot read: {exc.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise Rejection("too_large", f"file grew past {limit} bytes while read")
        return data
    finally:
        os.close(fd)


def append(path: Path, data: bytes) -> bytes:
    """Append `data` (creating the file); return what could not be written. O_NOFOLLOW:
    never through a link someone planted on the share."""
    if not data:
        return b""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError:
        return data
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return bytes(view)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return b""


def dump_json(obj: Any) -> bytes:
    try:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A file name from the share that is not UTF-8 (os.listdir hands its bytes over as
        # lone surrogates): escaped, so the record is still written, and reads back the same.
        return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")


# -- directories held open: nothing under the root is followed ---------------------------
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DirRefused(Rejection):
    """A directory of the share that is not what the layout says: a symbolic link, not a
    directory, gone, or owned by a user this node does not expect."""


def open_dir(
    name: str | Path,
    *,
    dir_fd: int | None = None,
    owners: frozenset[int] = frozenset(),
    follow: bool = False,
) -> int:
    """Open a directory as itself: O_NOFOLLOW (a symbolic link in its place is refused, never
    followed), O_DIRECTORY (so is anything else), then its owner checked against `owners`
    (empty: any). `follow` only for the configured root itself, which the operator chose."""
    flags = DIR_FLAGS & ~os.O_NOFOLLOW if follow else DIR_FLAGS
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        where = os.fspath(name)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # With O_DIRECTORY, Linux says ENOTDIR for a symbolic link too: look at it.
            try:
                link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
            except OSError:
                link = exc.errno == errno.ELOOP
            if link:
                raise DirRefused("dir_symlink", f"{where} is a symbolic link") from None
            raise DirRefused("dir_not_directory", f"{where} is not a directory") from None
        if exc.errno == errno.ENOENT:
            raise DirRefused("dir_missing", f"{where} does not exist") from None
        raise DirRefused("dir_unreadable", f"{where}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if owners and info.st_uid not in owners:
            raise DirRefused(
                "dir_owner",
                f"{os.fspath(name)} is owned by uid {info.st_uid}, not by "
                + " or ".join(str(uid) for uid in sorted(owners)),
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def held(fd: int) -> Path:
    """A path that names the directory `fd` holds, whatever has been renamed or replaced
    since along the path it was opened by: every lookup below it starts at that very
    directory (the kernel resolves /proc/self/fd/N to the open file, not to a name)."""
    return Path(f"/proc/self/fd/{fd}")
