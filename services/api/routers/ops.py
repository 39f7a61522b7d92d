"""Liveness and readiness for orchestrators (no authentication)."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from tieline.projections import selfcheck
from tieline.projections.queries.common import checkpoint
from tieline.services.api.deps import RT
from tieline.services.api.runtime import Runtime

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


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


async def _self_check(rt: Runtime) -> dict[str, Any] | None:
    """The live projection's last self-check (projections/selfcheck.py); None before one."""
    try:
        async with rt.connections.connection(timeout=2) as conn:
            return await selfcheck.latest(
                conn, rt.settings.database_schema, rt.connections.pool.generation.consumer
            )
    except psycopg.errors.UndefinedTable:
        return None  # no worker has run a round yet
    except Exception as exc:  # PostgreSQL unavailable: the checks above already say so
        return {"ok": None, "error": f"unavailable: {type(exc).__name__}"}


@router.get("/readyz", tags=["ops"])
async def readyz(
    rt: RT,
    max_lag: Annotated[
        int | None,
        Query(ge=0, description="Also fail while the projection lags by more than this."),
    ] = None,
) -> JSONResponse:
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
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)
