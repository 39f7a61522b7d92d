"""Password authentication for the embedded PostgreSQL.

An embedded cluster used to be made with ``initdb --auth=trust``: any local user (any process
on the machine, in fact, since the server listens on 127.0.0.1) could connect as the
superuser and read or change every workspace's data. Now the cluster asks for a password
(SCRAM-SHA-256) on TCP and on its socket. The password is made once, kept next to the cluster
in ``<data_dir>/password`` (mode 0600, owned by whoever runs ``tieline up``), and is part of
the connection URL the supervisor hands its children and writes to ``run/endpoints.json``
(also 0600).

A cluster made by an older version still says ``trust`` in ``pg_hba.conf``: on its next start
the roles get the password and those lines become ``scram-sha-256`` (see
:func:`trusting_lines` and :func:`require_passwords`).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from tieline.services.runtime.errors import OperationalError

__all__ = ["load_or_make_password", "require_passwords", "set_password", "trusting_lines"]

#: The method a trusting pg_hba.conf line names (the last field before any options).
_TRUST = re.compile(r"(?<=\s)trust(?=\s*$|\s+\w+=)")


def load_or_make_password(path: Path, *, cluster_exists: bool) -> str:
    """The password kept in ``path``; a new one (written 0600) if the file is missing.

    A missing file beside an existing cluster that already asks for passwords cannot be
    recovered here: making a new password would lock every client out, so that is an error
    that says what to do.
    """
    if path.is_file():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    if cluster_exists and not trusting_lines(path.parent / "pgdata" / "pg_hba.conf"):
        raise OperationalError(
            f"{path} is missing but the PostgreSQL cluster beside it asks for a password; "
            "restore that file from a backup (or restore the database from a dump into a "
            "new data dir)"
        )
    value = secrets.token_urlsafe(24)  # URL-safe: goes into postgresql://user:pw@host/db as is
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not change a file that was already there
    return value


def trusting_lines(hba: Path) -> list[int]:
    """Indexes of the lines of ``hba`` that let a client in without a password."""
    if not hba.is_file():
        return []
    lines = hba.read_text(encoding="utf-8").splitlines()
    return [
        i
        for i, line in enumerate(lines)
        if line.strip() and not line.lstrip().startswith("#") and _TRUST.search(line)
    ]


def set_password(conn: psycopg.Connection[TupleRow], role: str, password: str) -> None:
    """Give ``role`` ``password`` (stored as a SCRAM verifier, the server's default)."""
    # DDL takes no bound parameters; sql.Literal quotes the value for the statement.
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
    )


def require_passwords(
    conn: psycopg.Connection[TupleRow], hba: Path, owner: tuple[int, int] | None
) -> bool:
    """Turn ``hba``'s ``trust`` lines into ``scram-sha-256`` and reload; True if any changed.

    The caller has already given every role it will log in as a password, so nothing is
    locked out. ``owner`` (uid, gid) is whom the server runs as, when that is not us.
    """
    indexes = trusting_lines(hba)
    if not indexes:
        return False
    lines = hba.read_text(encoding="utf-8").splitlines()
    for i in indexes:
        lines[i] = _TRUST.sub("scram-sha-256", lines[i])
    staged = hba.with_name(hba.name + ".tieline-tmp")
    staged.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(staged, 0o600)
    if owner is not None:
        os.chown(staged, *owner)
    os.replace(staged, hba)
    conn.execute("SELECT pg_reload_conf()")
    return True
