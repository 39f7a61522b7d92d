"""``<data-dir>/run/endpoints.json``: where a running ``tieline up`` can be reached.

``tieline up`` writes it (atomically: a temporary file renamed over the old one) once every
process is ready, and removes it when it stops cleanly. Operator commands given
``--data-dir DIR`` read it and connect to exactly those servers, as the NATS ``admin`` user of
an embedded NATS, with the names (schema, stream, subject prefix) the installation uses — so
``tieline verify --data-dir DIR`` needs nothing else. It holds the database URL, with the
embedded PostgreSQL's password in it, so it is written 0600 in a 0700 ``run/``; the NATS
passwords it only names (``secrets/``, mode 0600).

A file left by a run that was killed is not trusted: the supervisor's lock
(``run/supervisor.lock``, see installation.py) tells whether the installation is running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tieline.plumbing.config import Settings
from tieline.plumbing.files import make_dirs, replace_file
from tieline.services.runtime.errors import NotRunning, OperationalError
from tieline.services.runtime.installation import running_pid

__all__ = ["ENDPOINTS_FILE", "Endpoints", "read_endpoints", "remove_endpoints", "write_endpoints"]

ENDPOINTS_FILE = Path("run") / "endpoints.json"


class Endpoints(BaseModel):
    """What an operator command needs to work on a running installation."""

    format: int = 1
    data_dir: str
    supervisor_pid: int
    started_at: str
    api_url: str
    nats_url: str
    #: The embedded nats-server's monitoring endpoint (None for an external NATS).
    nats_monitor_url: str | None = None
    database_url: str
    database_schema: str
    stream_name: str
    subject_prefix: str
    consumer_name: str
    #: Server pids (None: external server); for an operator's information only.
    nats_pid: int | None = None
    postgres_pid: int | None = None
    #: JSON {user: password} of the embedded NATS's users (None: external NATS, whose
    #: credentials come from TIELINE_NATS_USER / TIELINE_NATS_PASSWORD).
    nats_credentials_file: str | None = None
    #: The NATS user operator commands connect as.
    nats_admin_user: str | None = None
    admin_token_file: str
    logs_dir: str
    #: role -> its Prometheus ``/metrics`` URL (the api's own port; the others' health port).
    metrics_urls: dict[str, str] = {}

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this installation (servers, names, the admin NATS user)."""
        update: dict[str, Any] = {
            "nats_url": self.nats_url,
            "database_url": self.database_url,
            "database_schema": self.database_schema,
            "stream_name": self.stream_name,
            "subject_prefix": self.subject_prefix,
            "consumer_name": self.consumer_name,
        }
        if self.nats_credentials_file and self.nats_admin_user:
            path = Path(self.nats_credentials_file)
            try:
                password = json.loads(path.read_text())[self.nats_admin_user]
            except (OSError, ValueError, KeyError) as exc:
                raise OperationalError(
                    f"cannot read the NATS {self.nats_admin_user!r} password from {path}: {exc}"
                ) from exc
            update.update(nats_user=self.nats_admin_user, nats_password=password)
        return base.model_copy(update=update)


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> Path:
    """Write ``run/endpoints.json`` atomically (mode 0600: database URLs may hold a password)."""
    path = data_dir / ENDPOINTS_FILE
    make_dirs(path.parent)
    replace_file(path, (endpoints.model_dump_json(indent=2) + "\n").encode())
    return path


def remove_endpoints(data_dir: Path) -> None:
    """Remove ``run/endpoints.json`` (on a clean stop)."""
    (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def read_endpoints(data_dir: Path) -> Endpoints:
    """The endpoints of the ``tieline up`` running on ``data_dir``; :class:`NotRunning` when
    none is running there or it is still starting."""
    data_dir = data_dir.expanduser().resolve()
    pid = running_pid(data_dir)
    if pid is None:
        raise NotRunning(
            f"no tieline up is running on {data_dir}; start it with "
            f"`tieline up --data-dir {data_dir}`"
        )
    path = data_dir / ENDPOINTS_FILE
    try:
        return Endpoints.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise NotRunning(
            f"tieline up (pid {pid}) on {data_dir} is still starting ({path} not written yet)"
        ) from None
    except (OSError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        raise OperationalError(f"cannot read {path}: {reason}") from exc
