"""Password authentication for the embedded PostgreSQL.

An embedded cluster used to be made with ``initdb --auth=trust``: any local user (any process
on the machine, in fact, since the server listens on 127.0.0.1) could connect as the
superuser and read or change every workspace's data. Now the cluster asks for a password
(SCRAM-SHA-256) on TCP and on its socket. The password is made once, kept next to the cluster
in ``<data_dir>/password`` (mode 0600, owned by whoever runs ``tieline up``), and is part of
the connection URL the supervisor hands its children and writes to ``run/endpoints.json``
(also 0600).

A cluster made by an older version still says ``trust`` in ``pg_hba.conf``. It is converted
*before* the server accepts any client (a session opened while it still trusted would outlive
the change): the roles get the password in single-user mode (``postgres --single``, no
network, the password on its standard input), then the ``trust`` methods become
``scram-sha-256``, then the server starts. After the start the caller checks, with
``pg_hba_file_rules``, that no rule trusts and none failed to parse.

When we are root the cluster directory belongs to the unprivileged user the server runs as,
who may have put symbolic links in it: ``pg_hba.conf`` is read and written without following
any (``O_NOFOLLOW``, a new file created ``O_EXCL``, its owner and mode set on the open file).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
from pathlib import Path

from tieline.plumbing.files import make_dirs, replace_file
from tieline.services.runtime.errors import OperationalError

__all__ = [
    "HBA_PROBLEMS_SQL",
    "load_or_make_password",
    "read_hba",
    "set_passwords_offline",
    "trusting_lines",
    "untrusted",
    "write_hba",
]

#: Rules the server would apply that trust a client, or that it could not read.
HBA_PROBLEMS_SQL = """SELECT line_number, auth_method, error FROM pg_hba_file_rules
                       WHERE error IS NOT NULL OR auth_method = 'trust'"""

#: A connection type of a pg_hba.conf record, and how many fields precede its method when
#: the address is one field (``local`` has none).
_TYPES = {"local": 3, "host": 4, "hostssl": 4, "hostnossl": 4, "hostgssenc": 4, "hostnogssenc": 4}
#: An IPv4 netmask written as a separate field (``127.0.0.1 255.255.255.255``).
_MASK = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$|^[0-9A-Fa-f:]+$")
_FIELD = re.compile(r'"(?:[^"]|"")*"|[^\s"]+')


def load_or_make_password(path: Path, *, cluster_exists: bool, trusting: bool) -> str:
    """The password kept in ``path``; a new one (written durably, 0600) if it is missing.

    A missing file beside an existing cluster that already asks for passwords cannot be
    recovered here: a new password would lock every client out, so that is an error that
    says what to do.
    """
    if path.is_file():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    if cluster_exists and not trusting:
        raise OperationalError(
            f"{path} is missing but the PostgreSQL cluster beside it asks for a password; "
            "restore that file from a backup (or restore the database from a dump into a "
            "new data dir)"
        )
    value = secrets.token_urlsafe(24)  # URL-safe: goes into postgresql://user:pw@host/db as is
    make_dirs(path.parent)
    replace_file(path, (value + "\n").encode())
    return value


def _method_index(fields: list[str]) -> int | None:
    """Where the authentication method of a record is, None for what is not a record
    (``include`` directives and the like)."""
    before = _TYPES.get(fields[0])
    if before is None:
        return None
    if before == 4 and len(fields) > 5 and _MASK.match(fields[4]) and "/" not in fields[3]:
        before = 5  # address and mask as two fields
    return before if len(fields) > before else None


def _record(line: str) -> tuple[list[str], list[tuple[int, int]], bool]:
    """The fields of one pg_hba.conf line, where each is, and whether a comment (``#``
    outside quotes) ended the line."""
    fields: list[str] = []
    spans: list[tuple[int, int]] = []
    for match in _FIELD.finditer(line):
        token = match.group()
        if not token.startswith('"') and "#" in token:
            head = token.split("#", 1)[0]
            if head:
                fields.append(head)
                spans.append((match.start(), match.start() + len(head)))
            return fields, spans, True
        fields.append(token)
        spans.append(match.span())
    return fields, spans, False


def _records(text: str) -> list[list[tuple[int, str]]]:
    """The records of a pg_hba.conf text as (physical line index, text) pieces: a line
    ending with a backslash continues on the next (PostgreSQL 16 and later)."""
    records: list[list[tuple[int, str]]] = []
    pieces: list[tuple[int, str]] = []
    for i, line in enumerate(text.splitlines()):
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            pieces.append((i, line[:-1]))
            continue
        pieces.append((i, line))
        records.append(pieces)
        pieces = []
    if pieces:
        records.append(pieces)
    return records


def _trusting(pieces: list[tuple[int, str]]) -> tuple[int, int, int] | None:
    """Where the method ``trust`` of a record is (physical line, start, end), None if its
    method is another (or it is no record)."""
    fields: list[str] = []
    where: list[tuple[int, int, int]] = []
    for index, text in pieces:
        found, spans, commented = _record(text)
        fields += found
        where += [(index, a, b) for a, b in spans]
        if commented:
            break
    at = _method_index(fields) if fields else None
    return where[at] if at is not None and fields[at].strip('"') == "trust" else None


def trusting_lines(text: str) -> list[int]:
    """Indexes of the physical lines of a pg_hba.conf text that hold a ``trust`` method."""
    found = (_trusting(pieces) for pieces in _records(text))
    return [spot[0] for spot in found if spot is not None]


def untrusted(text: str) -> str:
    """``text`` with each ``trust`` method replaced by ``scram-sha-256``, nothing else moved
    (a database or user named trust, a comment saying trust, stay)."""
    lines = text.splitlines()
    for pieces in _records(text):
        spot = _trusting(pieces)
        if spot is not None:
            i, a, b = spot
            lines[i] = lines[i][:a] + "scram-sha-256" + lines[i][b:]
    return "\n".join(lines) + "\n"


def read_hba(path: Path) -> str:
    """The text of ``path``, refusing to follow a symbolic link or to read anything but a
    regular file (a FIFO would block the start for ever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise OperationalError(f"cannot read {path} ({exc}); is it a symbolic link?") from exc
    with os.fdopen(fd, "r", encoding="utf-8", errors="surrogateescape") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OperationalError(f"{path} is not a regular file")
        return handle.read()


def write_hba(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    """Replace ``path`` with ``text`` (:func:`replace_file`: never through a link)."""
    replace_file(path, text.encode("utf-8", "surrogateescape"), owner)


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported server)."""
    if "\0" in value or "\n" in value:
        raise OperationalError("a PostgreSQL password may not hold NUL or a line break")
    return "'" + value.replace("'", "''") + "'"


def set_passwords_offline(
    argv: list[str],
    roles: list[str],
    password: str,
    *,
    cwd: Path,
    env: dict[str, str],
    owner: tuple[int, int] | None,
) -> str:
    """Give each of ``roles`` (those that exist) ``password`` in single-user mode: ``argv``
    is ``postgres --single -D PGDATA postgres``, run in ``cwd`` with ``env`` as ``owner``
    (uid, gid; None: as we are). The password goes on its standard input, never on a command
    line, nor in the output returned (masked) or in an error. Returns its output; an error in
    it raises."""
    tag = f"$t{secrets.token_hex(8)}$"  # a dollar quote no password contains
    statements = [
        # A failing statement is not echoed to the output (it holds the password), and the
        # verifier is SCRAM whatever an old postgresql.conf says (pg_hba.conf will ask SCRAM).
        "SET log_min_error_statement = panic",
        "SET password_encryption = 'scram-sha-256'",
    ]
    statements += [
        f"DO {tag} BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(role)}) "
        f"THEN EXECUTE format('ALTER ROLE %I PASSWORD %L', {_literal(role)}, "
        f"{_literal(password)}); END IF; END {tag}"
        for role in roles
    ]
    done = subprocess.run(
        argv,
        input="\n".join(statements) + "\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
        env=env,
        user=owner[0] if owner else None,
        group=owner[1] if owner else None,
        extra_groups=[] if owner else None,
    )
    output = str(done.stdout) + str(done.stderr)
    for form in (password, password.replace("'", "''")):
        output = output.replace(form, "***")
    errors = [line for line in output.splitlines() if "ERROR:" in line or "FATAL:" in line]
    if done.returncode != 0 or errors:
        raise OperationalError(
            "setting the PostgreSQL passwords in single-user mode failed "
            f"(exit {done.returncode}): {' | '.join(errors)[-500:] or output.strip()[-300:]}"
        )
    return output
