"""Webhook endpoints, deliveries and attempts in PostgreSQL (the state schema: they are not
rebuildable from the log). Every query is scoped by workspace where a client names one.

A delivery being attempted is *leased* (``lease_until``): no other attempt of it starts until
the lease is released or runs out, and only the attempt that holds the lease records the
outcome on the row (its ``lease_until`` and ``next_attempt_at`` as claimed are its token).
While an endpoint is disabled its deliveries are *held*: new changes are still recorded for it
and nothing is given up, but nothing is sent except manual redeliveries; enabling it sends what
was held, with a fresh retry budget (what the Standard Webhooks / Svix "recover" promise asks).
A held delivery's ``next_attempt_at`` is :data:`HELD_AT` (year 9999), so the claim, which
reads only each endpoint's first due rows, never meets it; the API shows it as no next
attempt.
Held deliveries are kept for ``webhook_log_retention_s``, like the delivery log.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import AsyncConnection
from tieline.plumbing.crypto import MasterKey

Row = dict[str, Any]

ENDPOINT_COLS = """endpoint_id, workspace_id, url, kinds, description, created_by, created_at,
    consecutive_failures, disabled_at, disabled_reason, secret_rotated_at,
    CASE WHEN previous_secret_until > now() THEN previous_secret_until END
        AS previous_secret_until"""
DELIVERY_COLS = """id, delivery_id, endpoint_id, position, kind, status, attempts,
    next_attempt_at, last_status, last_error, created_at, delivered_at, body"""


def secret_purpose(ws: str, endpoint_id: str) -> str:
    return f"webhook/{ws}/{endpoint_id}"


async def create_endpoint(
    conn: AsyncConnection[Any],
    ws: str,
    url: str,
    kinds: list[str],
    description: str | None,
    secret: str,
    master_key: MasterKey,
    actor: str,
) -> Row:
    """Register an endpoint; its secret is stored sealed under the master key."""
    endpoint_id = "ep_" + secrets.token_hex(8)
    sealed = master_key.seal(secret_purpose(ws, endpoint_id), secret.encode())
    cur = await conn.execute(
        f"""INSERT INTO webhook_endpoints (endpoint_id, workspace_id, url, kinds, description,
                secret, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)
            RETURNING {ENDPOINT_COLS}""",
        (endpoint_id, ws, url, kinds, description, sealed, actor),
    )
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row


async def endpoints(conn: AsyncConnection[Any], ws: str) -> list[Row]:
    cur = await conn.execute(
        f"SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE workspace_id = %s "
        "ORDER BY created_at, endpoint_id",
        (ws,),
    )
    return list(await cur.fetchall())


async def endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> Row | None:
    cur = await conn.execute(
        f"SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE workspace_id = %s "
        "AND endpoint_id = %s",
        (ws, endpoint_id),
    )
    row: Row | None = await cur.fetchone()
    return row


async def delete_endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> bool:
    """Delete an endpoint with its deliveries and attempts."""
    cur = await conn.execute(
        "DELETE FROM webhook_endpoints WHERE workspace_id = %s AND endpoint_id = %s",
        (ws, endpoint_id),
    )
    return cur.rowcount > 0


async def enable_endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> Row | None:
    """Enable a disabled endpoint again, its failure count cleared. The deliveries held while
    it was disabled are due at once, each with a fresh retry budget (one in flight, a manual
    redelivery, keeps its lease and its schedule). Enabling an enabled endpoint changes
    nothing but the failure count."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT disabled_at FROM webhook_endpoints WHERE workspace_id = %s "
            "AND endpoint_id = %s FOR UPDATE",
            (ws, endpoint_id),
        )
        was = await cur.fetchone()
        if was is not None and was["disabled_at"] is not None:
            await conn.execute(
                """UPDATE webhook_deliveries SET next_attempt_at = now(), attempts = 0
                    WHERE endpoint_id = %s AND status = 'pending' AND NOT manual
                      AND (lease_until IS NULL OR lease_until < now())""",
                (endpoint_id,),
            )
        cur = await conn.execute(
            f"""UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,
                    consecutive_failures = 0
                WHERE workspace_id = %s AND endpoint_id = %s RETURNING {ENDPOINT_COLS}""",
            (ws, endpoint_id),
        )
        row: Row | None = await cur.fetchone()
    return row


async def deliveries(
    conn: AsyncConnection[Any], endpoint_id: str, status: str | None, after_id: int, limit: int
) -> list[Row]:
    """A page of an endpoint's deliveries, newest first (``after_id``: below this id, 0 for
    the first page), each with its attempts."""
    cur = await conn.execute(
        f"""SELECT {DELIVERY_COLS} FROM webhook_deliveries
             WHERE endpoint_id = %s AND (%s::text IS NULL OR status = %s)
               AND (%s = 0 OR id < %s)
             ORDER BY id DESC LIMIT %s""",
        (endpoint_id, status, status, after_id, after_id, limit),
    )
    rows = list(await cur.fetchall())
    ids = [r["delivery_id"] for r in rows]
    cur = await conn.execute(
        """SELECT delivery_id, at, duration_ms, status_code, error, manual FROM webhook_attempts
            WHERE delivery_id = ANY(%s) ORDER BY id""",
        (ids,),
    )
    attempts: dict[str, list[Row]] = {i: [] for i in ids}
    for a in await cur.fetchall():
        attempts[a.pop("delivery_id")].append(a)
    for r in rows:
        r["attempt_log"] = attempts[r["delivery_id"]]
        if r["next_attempt_at"] >= HELD_SINCE:
            r["next_attempt_at"] = None  # held until the endpoint is enabled
    return rows


async def redeliver(
    conn: AsyncConnection[Any], ws: str, endpoint_id: str, delivery_id: str
) -> Row | None:
    """Schedule a delivery again now, as a manual redelivery: sent even to a disabled endpoint,
    with a fresh retry budget (retried with backoff like any delivery until it succeeds or
    runs out of attempts).

    The lease is left alone: when an attempt of the delivery is in flight, the redelivery
    waits for it (never two attempts of one message at once), and that attempt, finding
    ``next_attempt_at`` changed under its lease, records only itself in the attempt log and
    leaves the row to the redelivery, which is then sent at once."""
    cur = await conn.execute(
        f"""UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = clock_timestamp(),
                manual = true, attempts = 0
            WHERE workspace_id = %s AND endpoint_id = %s AND delivery_id = %s
            RETURNING {DELIVERY_COLS}""",
        (ws, endpoint_id, delivery_id),
    )
    row: Row | None = await cur.fetchone()
    return row


# -- the delivery process ----------------------------------------------------------------------


async def subscribed_endpoints(conn: AsyncConnection[Any], workspaces: list[str]) -> list[Row]:
    """The endpoints of ``workspaces`` (id, workspace, kinds), disabled ones too: their
    deliveries are recorded and held until they are enabled again."""
    cur = await conn.execute(
        "SELECT endpoint_id, workspace_id, kinds FROM webhook_endpoints "
        "WHERE workspace_id = ANY(%s)",
        (workspaces,),
    )
    return list(await cur.fetchall())


def body_of(kind: str, at: Any, data: dict[str, Any]) -> str:
    """The JSON body Standard Webhooks recommends: ``type``, ``timestamp``, ``data``."""
    return orjson.dumps({"type": kind, "timestamp": at.isoformat(), "data": data}).decode()


async def enqueue(conn: AsyncConnection[Any], items: list[tuple[str, str, str, str, str]]) -> int:
    """Record deliveries (endpoint, workspace, position, kind, body); one per endpoint and
    position however often a change is handed over (at-least-once upstream)."""
    if not items:
        return 0
    rows = [(HELD_AT, "msg_" + secrets.token_urlsafe(16).replace("-", "x"), *i) for i in items]
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id, position,
                   kind, body, next_attempt_at)
               SELECT v.*, CASE WHEN e.disabled_at IS NULL THEN now()
                                ELSE %s::timestamptz END
                 FROM (VALUES (%s, %s, %s, %s, %s, %s)) AS v (i, ep, ws, pos, kind, body)
                 JOIN webhook_endpoints e ON e.endpoint_id = v.ep
                  -- waits for an enable or a disable of the endpoint in progress and reads
                  -- its outcome (from the statement's snapshot, a row enqueued while an
                  -- enable committed stayed held, year 9999, for ever)
                  FOR SHARE OF e
               ON CONFLICT (endpoint_id, position) DO NOTHING""",
            rows,
        )
    return len(rows)


#: ``next_attempt_at`` of a held delivery (its endpoint disabled): out of the due range, so
#: the claim never reads it; enabling the endpoint makes it due. A date Python can still read
#: ('infinity' it cannot); shown as no next attempt.
HELD_AT = "9999-01-01 00:00:00+00"
HELD_SINCE = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt. ``due_at`` (its ``next_attempt_at`` when claimed)
    and ``lease_until`` are the lease's token; ``mark`` is how many failures of its endpoint
    had counted when it was claimed (one counted after that overlapped this attempt)."""

    delivery_id: str
    endpoint_id: str
    workspace_id: str
    body: str
    attempts: int
    manual: bool
    url: str
    sealed_secret: bytes
    due_at: datetime
    lease_until: datetime
    mark: int
    #: The secret a rotation replaced, while it still signs (None otherwise).
    sealed_previous: bytes | None = None

    def secrets(self, master_key: MasterKey) -> list[str]:
        """The secrets this attempt is signed with: the current one, then the previous one
        while a rotation keeps it."""
        purpose = secret_purpose(self.workspace_id, self.endpoint_id)
        sealed = [self.sealed_secret, *([self.sealed_previous] if self.sealed_previous else [])]
        return [master_key.unseal(purpose, s).decode() for s in sealed]


#: The claim (see :func:`claim_due`): each endpoint's first due rows, the per-endpoint bound
#: over them and its attempts in flight, and the locked rows checked again.
CLAIM_SQL = """WITH RECURSIVE pending_eps (endpoint_id) AS (
       -- the endpoints with pending rows, one index descent each on the due index (a loose
       -- index scan): an endpoint with nothing pending costs nothing, a backlog is jumped
       (SELECT endpoint_id FROM webhook_deliveries WHERE status = 'pending'
         ORDER BY endpoint_id LIMIT 1)
       UNION ALL
       SELECT (SELECT d.endpoint_id FROM webhook_deliveries d
                WHERE d.status = 'pending' AND d.endpoint_id > p.endpoint_id
                ORDER BY d.endpoint_id LIMIT 1)
         FROM pending_eps p WHERE p.endpoint_id IS NOT NULL),
   cand AS MATERIALIZED (
       SELECT d.* FROM pending_eps e
       CROSS JOIN LATERAL (
              SELECT d.id, d.delivery_id, d.endpoint_id, d.next_attempt_at, d.manual
                FROM webhook_deliveries d
               WHERE d.endpoint_id = e.endpoint_id AND d.status = 'pending'
                 AND d.next_attempt_at <= now()
                 AND (d.lease_until IS NULL OR d.lease_until < now())
               ORDER BY d.endpoint_id, d.next_attempt_at LIMIT %(scan)s) d),
   busy AS (  -- attempts in flight, of the endpoints with candidates only
       SELECT c.endpoint_id, l.n FROM (SELECT DISTINCT endpoint_id FROM cand) c
       CROSS JOIN LATERAL (  -- on webhook_deliveries_leased
              SELECT count(*) AS n FROM webhook_deliveries x
               WHERE x.endpoint_id = c.endpoint_id AND x.lease_until IS NOT NULL
                 AND x.lease_until >= now() AND x.status = 'pending') l),
   ranked AS (
       SELECT c.delivery_id, c.next_attempt_at, b.n + row_number()
                OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id)
                AS slot
         FROM cand c JOIN webhook_endpoints e USING (endpoint_id) JOIN busy b USING (endpoint_id)
        WHERE e.disabled_at IS NULL OR c.manual),
   held AS (  -- due rows of a disabled endpoint (one enqueued as it was disabled): held now
       UPDATE webhook_deliveries d SET next_attempt_at = %(held)s::timestamptz
        WHERE d.id = ANY (ARRAY(  -- by primary key (a join here became a scan of the table)
              SELECT c.id FROM cand c JOIN webhook_endpoints e USING (endpoint_id)
               WHERE e.disabled_at IS NOT NULL AND NOT c.manual))
          -- unchanged since the snapshot (an enable sets a new time: then it is left alone)
          AND (d.id, d.next_attempt_at) IN (SELECT c.id, c.next_attempt_at FROM cand c)
          AND NOT d.manual AND d.status = 'pending'),
   due AS (
       SELECT d.delivery_id FROM webhook_deliveries d JOIN ranked r USING (delivery_id)
        WHERE (%(cap)s::int IS NULL OR r.slot <= %(cap)s::int)
          -- checked again on the locked row: it may have changed since the snapshot
          AND d.status = 'pending' AND d.next_attempt_at <= now()
          AND (d.lease_until IS NULL OR d.lease_until < now())
          AND (d.manual OR EXISTS (
               SELECT 1 FROM webhook_endpoints e
                WHERE e.endpoint_id = d.endpoint_id AND e.disabled_at IS NULL))
        ORDER BY r.next_attempt_at LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED)
   UPDATE webhook_deliveries d SET lease_until = now() + %(lease)s * interval '1 second'
     FROM due, webhook_endpoints e
    WHERE d.delivery_id = due.delivery_id AND e.endpoint_id = d.endpoint_id
   RETURNING d.delivery_id, d.endpoint_id, d.workspace_id, d.body, d.attempts, d.manual,
             e.url, e.secret, d.next_attempt_at, d.lease_until,
             e.counted_total AS mark,
             CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END
                 AS previous_secret"""


#: Whether any delivery may be claimable now: the earliest due time of the pending rows not
#: leased (``webhook_deliveries_ready``, migration 0011), or the earliest lease of the due
#: rows leased (on the small index of leased rows: a lease that ran out is an attempt whose
#: process died), is past. Each is an aggregate, not an EXISTS: an EXISTS that found nothing
#: could be planned as a scan of the whole table (expected to stop early: with a backlog of
#: due rows at the end of the table, 105 ms at 1.2 million rows, a reviewer's run), and the
#: minimum of an indexed column is read off the index's first entry. A row found may still be
#: beyond its endpoint's bound or held; the claim decides. Nothing found: nothing to claim.
ANY_DUE_SQL = """SELECT coalesce((
           SELECT min(next_attempt_at) FROM webhook_deliveries
            WHERE status = 'pending' AND lease_until IS NULL), 'infinity') <= now()
       OR coalesce((
           SELECT min(lease_until) FROM webhook_deliveries
            WHERE lease_until IS NOT NULL AND status = 'pending'
              AND next_attempt_at <= now()), 'infinity') < now() AS due"""


async def anything_due(conn: AsyncConnection[Any]) -> bool:
    """Whether :func:`claim_due` could find anything now (see :data:`ANY_DUE_SQL`)."""
    cur = await conn.execute(ANY_DUE_SQL)
    row = await cur.fetchone()
    return bool(row and row["due"])


async def claim_due(
    conn: AsyncConnection[Any], limit: int, lease_s: float, per_endpoint: int | None = None
) -> list[Due]:
    """Deliveries due now, leased for one attempt (another delivery process skips them): of
    enabled endpoints, or manual redeliveries; oldest due first. ``per_endpoint``: at most
    this many attempts in flight to one endpoint, counting the leases already out (so one
    slow receiver cannot take every sending slot); None: no such bound.

    Bounded whatever the backlog, and fair between endpoints: the candidates are, for each
    endpoint, the first rows of its own due index that are not leased
    (``webhook_deliveries_endpoint_due``, migration 0009), as many as it may take, and its
    attempts in flight are counted on the small index of leased rows
    (``webhook_deliveries_leased``) for the endpoints with candidates. The endpoints probed
    are those with pending rows, found by a loose index scan of the same index (an endpoint
    with nothing pending costs nothing): a claim costs about two index descents per endpoint
    with pending rows (``python -m bench webhook_claim``: at 10,000 endpoints, 1 in 100 with
    a row due and a retry later, 7.2 ms, against 25.7 ms probing every endpoint; slower when
    every endpoint has pending rows, and while a long-held snapshot keeps many deleted rows'
    index entries alive: docs/performance.md); a long backlog
    of one endpoint does not hide the others' rows (a window over the global due index did: a
    recovered endpoint's backlog took every candidate). Held rows are not in the due range
    (:data:`HELD_AT`). The locked row is checked again (status, lease, still due, endpoint still
    enabled): it may have been claimed, rescheduled, paused or held since the statement's
    snapshot. PostgreSQL re-evaluates these on the newest version of a row changed meanwhile;
    disabling an endpoint changes its rows too (held), so that reaches the check even when the
    endpoint row's change is not yet in the snapshot.

    The claim runs only when :func:`anything_due` finds a row: its cost grows with the
    endpoints that have pending rows, the question's does not (an idle sender asks four
    times a second)."""
    if not await anything_due(conn):
        return []
    cur = await conn.execute(
        CLAIM_SQL,
        {
            "cap": per_endpoint,
            "limit": limit,
            "lease": lease_s,
            "scan": limit if per_endpoint is None else min(limit, per_endpoint),
            "held": HELD_AT,
        },
    )
    return [
        Due(
            r["delivery_id"],
            r["endpoint_id"],
            r["workspace_id"],
            r["body"],
            r["attempts"],
            r["manual"],
            r["url"],
            bytes(r["secret"]),
            r["next_attempt_at"],
            r["lease_until"],
            int(r["mark"]),
            bytes(r["previous_secret"]) if r["previous_secret"] is not None else None,
        )
        for r in await cur.fetchall()
    ]


async def record_attempt(
    conn: AsyncConnection[Any],
    due: Due,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    counted: int | None = None,
) -> int:
    """Add the attempt to the delivery log; its id. ``counted``: the failure's place in its
    endpoint's streak when it counted towards disabling (migration 0009)."""
    cur = await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, duration_ms, status_code, error, manual, "
        "counted) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (due.delivery_id, duration_ms, status_code, error, due.manual, counted),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


#: The lease's token: the row is still as this attempt claimed it.
HELD = "delivery_id = %(id)s AND lease_until = %(lease)s AND next_attempt_at = %(due_at)s"


def _token(due: Due) -> dict[str, Any]:
    return {"id": due.delivery_id, "lease": due.lease_until, "due_at": due.due_at}


async def _release(conn: AsyncConnection[Any], due: Due) -> None:
    """The row changed under the lease (a manual redelivery): leave it to that, lease freed."""
    await conn.execute(
        "UPDATE webhook_deliveries SET lease_until = NULL "
        "WHERE delivery_id = %(id)s AND lease_until = %(lease)s",
        _token(due),
    )


async def lock_endpoint(conn: AsyncConnection[Any], endpoint_id: str) -> Row | None:
    """Lock the endpoint's row for this transaction (outcomes of one endpoint are recorded
    one after another, so each sees the ones before it); its failure count and disabled_at."""
    cur = await conn.execute(
        "SELECT consecutive_failures, counted_total, disabled_at FROM webhook_endpoints "
        "WHERE endpoint_id = %s FOR UPDATE",
        (endpoint_id,),
    )
    row: Row | None = await cur.fetchone()
    return row


async def succeeded(conn: AsyncConnection[Any], due: Due, status_code: int) -> None:
    """The receiver took it: the delivery is done and the endpoint's failure streak ends."""
    await conn.execute(
        "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE endpoint_id = %s",
        (due.endpoint_id,),
    )
    cur = await conn.execute(
        f"""UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1,
               delivered_at = now(), lease_until = NULL, manual = false, last_status = %(st)s,
               last_error = NULL WHERE {HELD}""",
        {**_token(due), "st": status_code},
    )
    if cur.rowcount == 0:
        await _release(conn, due)


#: What a counted failure's entry in the attempt log ends with, for people reading the log
#: (the rule itself reads ``webhook_attempts.counted``).
COUNTED = " (counts towards disabling: failure {} in a row)"


def counted_note(streak: int) -> str:
    """The note a counted failure's attempt carries: it is the ``streak``-th in a row."""
    return COUNTED.format(streak)


def overlapped(endpoint: Row, due: Due) -> bool:
    """Whether a *counted* failure of the endpoint was recorded after this attempt was
    claimed: its endpoint's count of counted failures (read under the endpoint's lock, as
    every counted failure is recorded) grew since the claim. Then this failure saw the same
    failing receiver and does not count. Failures that did not count (and manual
    redeliveries, 429s, which never count) do not suppress it. A count on the endpoint, not
    the newest attempt id: an id is taken before its transaction commits, so a failure of the
    endpoint committing after a claim could carry an id below the claim's mark."""
    return int(endpoint["counted_total"]) > due.mark


async def extend_streak(conn: AsyncConnection[Any], endpoint_id: str) -> int:
    """One more counted failure of the endpoint; the streak's length."""
    cur = await conn.execute(
        "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1, "
        "counted_total = counted_total + 1 WHERE endpoint_id = %s RETURNING consecutive_failures",
        (endpoint_id,),
    )
    row = await cur.fetchone()
    return int(row["consecutive_failures"]) if row else 0


async def failing_for_s(conn: AsyncConnection[Any], endpoint_id: str) -> float:
    """Seconds the endpoint's current streak has lasted: since the attempt that counted as its
    first failure (a success or enabling starts the count again, so the newest such attempt
    is the current streak's); since the endpoint was made when that attempt is no longer in
    the log."""
    cur = await conn.execute(
        """SELECT extract(epoch FROM now() - coalesce((
                   SELECT a.at FROM webhook_attempts a JOIN webhook_deliveries d
                          USING (delivery_id)
                    WHERE d.endpoint_id = e.endpoint_id AND a.counted = 1
                    ORDER BY a.id DESC LIMIT 1), e.created_at))::float8 AS s
             FROM webhook_endpoints e WHERE e.endpoint_id = %s""",
        (endpoint_id,),
    )
    row = await cur.fetchone()
    return float(row["s"]) if row else 0.0


async def disable(conn: AsyncConnection[Any], endpoint_id: str, reason: str) -> None:
    """Disable the endpoint with ``reason``. Its pending deliveries are held, not given up:
    enabling the endpoint sends them (and what arrives meanwhile)."""
    cur = await conn.execute(
        "UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = %s "
        "WHERE endpoint_id = %s AND disabled_at IS NULL",
        (reason, endpoint_id),
    )
    if cur.rowcount:  # held: out of the claim's due range (one in flight: when it is recorded)
        await conn.execute(
            """UPDATE webhook_deliveries SET next_attempt_at = %s
                WHERE endpoint_id = %s AND status = 'pending' AND NOT manual
                  AND (lease_until IS NULL OR lease_until < now())""",
            (HELD_AT, endpoint_id),
        )


async def pause(conn: AsyncConnection[Any], endpoint_id: str, seconds: float) -> None:
    """The receiver asked for ``seconds`` of quiet (``Retry-After`` on a 429 or 503): none of
    the endpoint's deliveries not in flight is attempted before then."""
    await conn.execute(
        """UPDATE webhook_deliveries
              SET next_attempt_at = greatest(next_attempt_at, now() + %s * interval '1 second')
            WHERE endpoint_id = %s AND status = 'pending'
              AND (lease_until IS NULL OR lease_until < now())""",
        (seconds, endpoint_id),
    )


async def failed(
    conn: AsyncConnection[Any],
    due: Due,
    status_code: int | None,
    error: str,
    retry_in_s: float | None,
) -> None:
    """Record a failed attempt: try again in ``retry_in_s`` seconds, or (None) give up. A
    manual redelivery stays one while it is retried (so it is sent to a disabled endpoint)."""
    cur = await conn.execute(
        f"""UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = NULL,
               manual = manual AND %(retry)s::float8 IS NOT NULL, last_status = %(st)s,
               last_error = %(error)s,
               status = CASE WHEN %(retry)s::float8 IS NULL THEN 'failed' ELSE 'pending' END,
               next_attempt_at = CASE
                   WHEN NOT (manual AND %(retry)s::float8 IS NOT NULL) AND EXISTS (
                        SELECT 1 FROM webhook_endpoints e WHERE e.endpoint_id = %(ep)s
                           AND e.disabled_at IS NOT NULL) THEN %(held)s::timestamptz
                   ELSE now() + coalesce(%(retry)s::float8, 0) * interval '1 second' END
            WHERE {HELD}""",
        {
            **_token(due),
            "st": status_code,
            "error": error,
            "retry": retry_in_s,
            "ep": due.endpoint_id,
            "held": HELD_AT,
        },
    )
    if cur.rowcount == 0:
        await _release(conn, due)


async def forget_old(conn: AsyncConnection[Any], older_than_s: float) -> int:
    """Delete finished deliveries (and their attempts) older than ``older_than_s``, and the
    deliveries a disabled endpoint has held that long."""
    cur = await conn.execute(
        """DELETE FROM webhook_deliveries d
            WHERE d.created_at < now() - %s * interval '1 second'
              AND (d.status <> 'pending' OR (NOT d.manual AND EXISTS (
                   SELECT 1 FROM webhook_endpoints e
                    WHERE e.endpoint_id = d.endpoint_id AND e.disabled_at IS NOT NULL)))""",
        (older_than_s,),
    )
    return cur.rowcount
