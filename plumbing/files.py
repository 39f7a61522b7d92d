"""Private files written durably: secrets, passwords, connection URLs.

Every such file is mode 0600 from its first byte (set on the open file, whatever the umask),
never written through a symbolic link, fsynced before it is used, and replaced by a rename
whose directory is fsynced too: after a crash it holds the old content or the new, never a
truncated one, and a key that has already encrypted data is never lost with the page cache.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any

__all__ = [
    "append_private",
    "create_file",
    "make_dirs",
    "replace_file",
    "sync_directory",
    "write_new",
]


def write_new(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` (it must not exist: FileExistsError) holding ``data``, fsynced: mode
    0600 from its creation and ``owner`` (uid, gid) set on the open file, never through a
    link. The file is durable once its directory entry is: see :func:`sync_directory`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` durably: a new file (:func:`write_new`) renamed into
    place (a rename replaces a link, never follows it), then its directory fsynced."""
    staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tieline")
    try:
        write_new(staged, data, owner)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def create_file(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` durably, whole or not at all: a new file (:func:`write_new`) linked
    into place (a hard link fails with FileExistsError when ``path`` exists, and leaves it
    alone), then its directory fsynced. Written in place, a full disk or an interrupt left a
    truncated file that the next run refused to replace (a reviewer's finding)."""
    staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tieline")
    try:
        write_new(staged, data, owner)
        os.link(staged, path, follow_symlinks=False)
    finally:
        staged.unlink(missing_ok=True)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync ``directory``, so a file created or renamed in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """``mkdir -p path``, each directory it creates with ``mode`` and durable: its entry in
    its parent fsynced. A file fsynced in a directory whose own entry never reached the disk
    could be lost with it after a crash (a reviewer's finding on ``secrets/``)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            directory.mkdir(mode=mode)
        sync_directory(directory.parent)


def append_private(path: Path, mode: str = "ab", encoding: str | None = None) -> IO[Any]:
    """Open a log file for appending, mode 0600 (a file made 0644 by an earlier version is
    narrowed too), never through a link: logs hold tracebacks, personal data and, once,
    a failed statement's text (a reviewer's finding: every log was readable by any local
    user)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, mode, encoding=encoding)
    except BaseException:
        os.close(fd)
        raise
