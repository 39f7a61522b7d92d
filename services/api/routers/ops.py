"""Liveness and readiness for orchestrators, and the AsyncAPI document of the event subjects
(no authentication)."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from tieline.plumbing.asyncapi import asyncapi_document
from tieline.projections import selfcheck
from tieline.projections.queries.common import checkpoint
from tieline.services.api.deps import RT
from tieline.services.api.errors import PROBLEM_JSON, REF_PROBLEM, problem_response
from tieline.services.api.models import Health, Readiness
from tieline.services.api.runtime import Runtime

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (nothing else is checked)."""
    return Health(status="ok")


async def _stream_seq(rt: Runtime) -> tuple[str, int]:
    """("ok", the stream's last seq), or why NATS is unavailable and -1."""
    try:
        assert rt.connections.nats_connected
        info = await rt.connections.nc.jetstream().stream_info(rt.settings.stream_name)
        return "ok", int(info.state.last_seq)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}", -1


async def _checkpoint(rt: Runtime) -> tuple[str, int]:
    """("ok", the live projection's checkpoint), or why PostgreSQL is unavailable and -1."""
    try:
        async with rt.connections.connection(timeout=2) as conn:
            seen = await checkpoint(conn, rt.connections.pool.generation.consumer)
        return "ok", seen
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}", -1


def public_self_check(found: dict[str, Any]) -> dict[str, Any]:
    """A self-check result as /readyz may show it: its differences counted, not listed. They
    name workspaces, people, scores and events of every workspace, and /readyz answers
    without a token; operators read them in the worker's ``selfcheck.ALARM`` log line, the
    ``self_checks`` table or ``tieline verify``."""
    shown = {k: v for k, v in found.items() if k != "problems"}
    shown["problem_count"] = len(found.get("problems") or [])
    return shown


async def _self_check(rt: Runtime) -> dict[str, Any] | None:
    """The live projection's last self-check (projections/selfcheck.py), its differences
    counted only; None before the first round."""
    try:
        async with rt.connections.connection(timeout=2) as conn:
            found = await selfcheck.latest(
                conn, rt.settings.database_schema, rt.connections.pool.generation.consumer
            )
        return None if found is None else public_self_check(found)
    except psycopg.errors.UndefinedTable:
        return None  # no worker has run a round yet
    except Exception as exc:  # PostgreSQL unavailable: the checks above already say so
        return {"ok": None, "error": f"unavailable: {type(exc).__name__}"}


NOT_READY_DOC: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Not ready: a `not-ready` problem with the same `ready` (false) and "
        "`checks` members as a ready answer.",
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF_PROBLEM}}},
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}


async def _sync_status(rt: Any) -> dict[str, int] | None:
    """Counts only: /readyz answers without a token, so no workspace or error shows here."""
    try:
        async with rt.connections.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS sources, count(*) FILTER (WHERE last_error IS NOT NULL) "
                "AS failing FROM sync_sources"
            )
            row = await cur.fetchone()
    except Exception:
        return None
    return {"sources": int(row["sources"]), "failing": int(row["failing"])} if row else None


@router.get("/readyz", response_model=Readiness, responses=NOT_READY_DOC)
async def readyz(
    rt: RT,
    max_lag: Annotated[
        int | None,
        Query(ge=0, description="Also fail while the projection lags by more than this."),
    ] = None,
) -> Any:
    """Ready when NATS and PostgreSQL answer. Projection lag is reported, and fails the check
    only when the caller asks with ``max_lag``: a long import must not take every API replica
    out of its load balancer (reads with ``?min_seq`` wait for the projection)."""
    checks: dict[str, Any] = {}
    checks["nats"], stream_seq = await _stream_seq(rt)
    checks["postgres"], seen = await _checkpoint(rt)
    ok = stream_seq >= 0 and seen >= 0
    if ok:
        lag = max(stream_seq - seen, 0)
        checks["projection"] = {
            "stream_seq": stream_seq,
            "checkpoint": seen,
            "lag": lag,
            "generation": rt.connections.pool.generation.gen,
        }
        ok = max_lag is None or lag <= max_lag
        checks["self_check"] = await _self_check(rt)
        checks["sync"] = await _sync_status(rt)
    if ok:
        return Readiness.model_validate({"ready": True, "checks": checks})
    down = [name for name in ("nats", "postgres") if checks[name] != "ok"]
    why = (
        f"{', '.join(down)} unavailable" if down else f"the projection lags by more than {max_lag}"
    )
    return problem_response(
        503,
        f"not ready: {why}",
        slug="not-ready",
        instance="/readyz",
        headers={"Retry-After": "1"},
        extra={"ready": False, "checks": checks},
    )


@router.get(
    "/asyncapi.json",
    response_class=JSONResponse,
    responses={200: {"description": "AsyncAPI 3.0 document (JSON)."}},
)
async def asyncapi(rt: RT) -> JSONResponse:
    """The AsyncAPI 3.0 document of the event subjects on NATS and their payloads, for this
    deployment's subject prefix and stream."""
    return JSONResponse(asyncapi_document(rt.settings.subject_prefix, rt.settings.stream_name))
