"""Files that hold secrets, or that a client trusts: written 0600 and read back only if they are this user's.

:func:`write_private_file` and :func:`read_private_file` keep secret keys (and a service's access tokens);
:func:`check_private_dir` and :func:`private_dir_problem` refuse a directory another user owns or may write
(a key directory, the directory a client bundle is unpacked into): whoever can write there can plant files
whose secrets they know, or swap them between a check and their use. No link is ever followed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = ["CLOEXEC", "NOFOLLOW", "check_private_dir", "private_dir_problem", "read_private_file", "write_private_file"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _owner_problem(info: os.stat_result) -> str | None:
    """Why a file or directory is not this user's (None: it is)."""
    if info.st_uid != os.geteuid():
        return f"is owned by user id {info.st_uid}, not by this user ({os.geteuid()})"
    return None


def private_dir_problem(info: os.stat_result, path: str | os.PathLike) -> str | None:
    """Why the directory ``path`` (``info``: its stat) may not hold secrets or files a client trusts: not a
    directory, another user's, or writable by others; None when it may."""
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    owner = _owner_problem(info)
    if owner is not None:
        return owner
    if info.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); run 'chmod 700 {path}'"
    return None


def check_private_dir(path: str | os.PathLike, what: str, risk: str) -> None:
    """Refuse an existing directory ``path`` (named ``what`` in messages) that :func:`private_dir_problem` finds
    unfit, saying the ``risk``; a missing one passes (it is made 0700 when first written)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    problem = private_dir_problem(info, path)
    if problem is not None:
        error = NotADirectoryError if problem == "is not a directory" else PermissionError
        raise error(f"{what} {path} {problem}: {risk}; choose a directory of your own (mode 700)")


def _refuse_symlink(path: Path, action: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}); secret keys are {action} regular files only, "
            "never through a link: remove the link or choose another path"
        )
    if not stat.S_ISREG(info.st_mode):
        raise PermissionError(f"{path} is not a regular file; secret keys are {action} regular files only")


def write_private_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600, set at creation).

    The bytes go to a new temporary file in the same directory (created exclusively, never
    through a symbolic link), which then replaces ``path`` in one step: readers see the old file or
    the whole new one, and a link placed at ``path`` is refused (or, if it appears meanwhile,
    replaced itself: its target is never written).
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _refuse_symlink(path, "written to")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_private_file(path: str | Path) -> bytes:
    """The bytes of a file written by :func:`write_private_file`: a regular file, not a link, mode
    0600, owned by this process's user (a key file planted by another user, even 0600, is theirs:
    they know its secret key)."""
    path = Path(path)
    _refuse_symlink(path, "read from")
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:  # became a link after the check above
            raise PermissionError(f"{path} is a symbolic link; secret keys are read from regular files only") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())  # the file actually opened
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{path} is not a regular file; secret keys are read from regular files only")
        owner = _owner_problem(info)
        if owner is not None:
            raise PermissionError(
                f"{path} {owner}: whoever created it knows its secrets. Do not use it; remove it, and keep such files "
                "in a directory only you can write (chmod 700)"
            )
        if info.st_mode & 0o077:
            raise PermissionError(f"{path} is readable by other users; run 'chmod 600 {path}' first")
        return handle.read()
