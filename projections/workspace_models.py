"""Which parameter sets each workspace's read models use, read from the projected archive:
the latest unretracted ``workspace.model_calibrated`` event of each workspace
(projections/strength_model_workspace.py says the rule). The live store, the bulk rebuild and
the read side all resolve it here, so they agree."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from tieline.projections.strength_model import PARAMS, Params
from tieline.projections.strength_model_workspace import (
    DEFAULT_MODEL,
    MODEL_CALIBRATED,
    WorkspaceModel,
    model_of,
)

# A partial index (events_model, projections/schema.py) makes this a lookup of the few
# adoption events, not a scan of the workspace's events.
_SQL = """SELECT workspace_id, payload::text FROM events
           WHERE type = %s AND retracted_by IS NULL AND workspace_id = ANY(%s)
           ORDER BY workspace_id, seq DESC"""
_ALL_SQL = """SELECT workspace_id, payload::text FROM events
               WHERE type = %s AND retracted_by IS NULL ORDER BY workspace_id, seq DESC"""


async def workspace_models(
    conn: AsyncConnection[Any], workspaces: Iterable[str] | None, base: Params = PARAMS
) -> dict[str, WorkspaceModel]:
    """The model of each workspace that adopted one (all of them when ``workspaces`` is None);
    a workspace missing from the answer uses ``base`` and the default momentum set."""
    # Tuples and text whatever the connection's row factory and JSON loader (the api reads
    # dict rows).
    async with conn.cursor(row_factory=tuple_row) as cur:
        if workspaces is None:
            await cur.execute(_ALL_SQL, (MODEL_CALIBRATED,))
        else:
            await cur.execute(_SQL, (MODEL_CALIBRATED, sorted(set(workspaces))))
        found = await cur.fetchall()
    payloads: dict[str, list[Any]] = defaultdict(list)
    for ws, payload in found:
        payloads[ws].append(orjson.loads(payload))
    return {ws: model_of(p, base) for ws, p in payloads.items()}


async def workspace_model(conn: AsyncConnection[Any], ws: str) -> WorkspaceModel:
    """The model one workspace's read models use."""
    return (await workspace_models(conn, [ws])).get(ws, DEFAULT_MODEL)
