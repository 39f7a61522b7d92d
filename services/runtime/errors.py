"""Expected operational failures of ``tieline up`` and the operator commands.

Each is something an operator can act on (a port taken, an installation already running, a
server that would not start); the CLI prints its message as one line and exits non-zero
instead of a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AlreadyRunning", "NotRunning", "OperationalError", "PortInUse", "ServerStartError"]


class OperationalError(RuntimeError):
    """A failure with a one-line explanation (``str(exc)``) and no useful traceback."""


class PortInUse(OperationalError):
    """A port ``tieline up`` must listen on is taken by another process."""

    def __init__(self, port: int, host: str, what: str, change: str, owner: str = "") -> None:
        by = f" by {owner}" if owner else ""
        super().__init__(
            f"port {port} on {host} ({what}) is already in use{by}; choose another with {change}"
        )
        self.port = port


class AlreadyRunning(OperationalError):
    """Another ``tieline up`` holds the data directory."""


class NotRunning(OperationalError):
    """An operator command was pointed at a data directory no ``tieline up`` is serving."""


class ServerStartError(OperationalError):
    """nats-server or PostgreSQL exited during start or did not become ready in time.

    ``str()`` keeps the tail of the server's log (what the tests and a developer want to read);
    :meth:`one_line` is what ``tieline up`` prints.
    """

    def __init__(self, kind: str, what: str, log_path: Path, tail: str) -> None:
        super().__init__(f"{kind} {what}; last lines of {log_path}:\n{tail}")
        self.kind = kind
        self.what = what
        self.log_path = log_path
        self.tail = tail

    def one_line(self) -> str:
        """``<server> <what>: <the log's last error line> (log: <path>)``."""
        lines = [line.strip() for line in self.tail.splitlines() if line.strip()]
        errors = [
            line
            for line in lines
            if any(mark in line for mark in ("FATAL", "PANIC", "ERROR", "[FTL]", "[ERR]"))
        ]
        cause = (errors or lines or [""])[-1][:300]
        return f"{self.kind} {self.what}: {cause} (log: {self.log_path})"
