"""The people directory: add a person, list the directory, read one person."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from tieline.projections.queries import people as queries
from tieline.services.api.deps import PID, RT, WS, MinSeq, Reader, Writer
from tieline.services.api.models import PersonIn, WriteResult, single_response

router = APIRouter()


@router.post(
    "/v1/workspaces/{ws}/people",
    tags=["people"],
    status_code=201,
    response_model=WriteResult,
    responses={409: {}, 413: {}, 422: {}},
)
async def add_person(ws: WS, person: PersonIn, who: Writer, rt: RT) -> JSONResponse:
    obj = {"type": "person.added", **person.model_dump(exclude_none=True)}
    obj.setdefault("person_id", uuid4().hex)
    [result] = await rt.bus.command(ws, "people", [obj], who.actor, str(uuid4()))
    if result["status"] < 300:
        result["person_id"] = obj["person_id"]
    return single_response(result)


@router.get("/v1/workspaces/{ws}/people", tags=["people"])
async def list_people(
    ws: WS,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: str | None = None,
) -> dict[str, Any]:
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        rows = await rt.decryption.reveal(ws, await queries.list_people(conn, ws, limit, after))
    await rt.audit.record(ws, who, "GET people", [r["person_id"] for r in rows])
    return {"people": rows, "next": rows[-1]["person_id"] if len(rows) == limit else None}


@router.get("/v1/workspaces/{ws}/people/{person}", tags=["people"])
async def get_person(
    ws: WS, person: PID, who: Reader, rt: RT, min_seq: MinSeq = None
) -> dict[str, Any]:
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        row = await queries.get_person(conn, ws, person)
    if row is None:
        raise HTTPException(404, "person not found")
    await rt.audit.record(ws, who, "GET person", [person])
    return (await rt.decryption.reveal(ws, [row]))[0]
