"""Rotating an endpoint's signing secret without losing a delivery (Standard Webhooks'
zero-downtime rotation): the replaced secret keeps signing beside the new one for a while.
The API's rules (docs/frontends.md, "Rotating the secret") are decided here, on the locked
endpoint row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from tieline.plumbing.crypto import MasterKey
from tieline.services.webhooks.store import ENDPOINT_COLS, Row, endpoint, secret_purpose


class RotationRefused(Exception):
    """A rotation that would lose a secret a receiver may hold, or that has nothing to do;
    the message says what to do instead."""


def _refusal(until: datetime | None) -> RotationRefused:
    if until is None:
        return RotationRefused(
            "no rotation is in progress, so there is no new secret to replace: rotate "
            "without replace_new"
        )
    return RotationRefused(
        "a rotation is in progress: the secret it replaced signs beside the new one until "
        f"{until.isoformat()}. Rotating again now would drop it while the receiver may hold "
        "no other. Wait until then; or replace only the new secret (replace_new: true, when "
        "its answer was lost or it is not wanted); or drop every other secret at once "
        "(keep_previous_s: 0, for a leaked secret)"
    )


async def rotate_secret(
    conn: AsyncConnection[Any],
    ws: str,
    endpoint_id: str,
    secret: str,
    master_key: MasterKey,
    keep_previous_s: float,
    replace_new: bool = False,
) -> Row | None:
    """Make ``secret`` the endpoint's signing secret; None when there is no such endpoint in
    the workspace.

    * Normally the secret it replaces signs every attempt too, beside the new one, for
      ``keep_previous_s`` seconds, so a receiver verifies whichever it has while it switches.
      Refused (:class:`RotationRefused`) while an earlier rotation's replaced secret still
      signs.
    * ``keep_previous_s`` 0 drops every other secret at once (a leaked secret), whatever is
      in progress.
    * ``replace_new``: only during a rotation: the new secret (lost, or not wanted) is
      replaced and the old one keeps signing until its time, as before.

    The conditions are checked on the locked row: of two rotations at once, the second sees
    the first's and is refused."""
    sealed = master_key.seal(secret_purpose(ws, endpoint_id), secret.encode())
    cur = await conn.execute(
        f"""UPDATE webhook_endpoints
               SET previous_secret = CASE WHEN %(keep)s = 0 THEN NULL
                       WHEN %(replace)s THEN previous_secret ELSE secret END,
                   previous_secret_until = CASE WHEN %(keep)s = 0 THEN NULL
                       WHEN %(replace)s THEN previous_secret_until
                       ELSE now() + %(keep)s * interval '1 second' END,
                   secret = %(sealed)s, secret_rotated_at = now()
             WHERE workspace_id = %(ws)s AND endpoint_id = %(ep)s
               -- keep 0 always; else replace_new exactly when a rotation is in progress
               AND (%(keep)s = 0
                    OR coalesce(previous_secret_until > now(), false) = %(replace)s::bool)
         RETURNING {ENDPOINT_COLS}""",
        {
            "keep": keep_previous_s,
            "replace": replace_new,
            "sealed": sealed,
            "ws": ws,
            "ep": endpoint_id,
        },
    )
    row: Row | None = await cur.fetchone()
    if row is not None:
        return row
    now = await endpoint(conn, ws, endpoint_id)
    if now is None:
        return None
    raise _refusal(now["previous_secret_until"])
