"""The people directory: add a person, list the directory, read one person."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4, uuid5

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel
from tieline.projections.queries import people as queries
from tieline.services.api import pagination
from tieline.services.api.deps import PID, RT, WS, MinSeq, Reader, Writer
from tieline.services.api.duplicates import duplicate_groups
from tieline.services.api.errors import ApiError
from tieline.services.api.models import (
    PeoplePage,
    Person,
    PersonIn,
    PersonSummary,
    WriteResult,
    write_answer,
)
from tieline.services.api.observe import correlation_id
from tieline.services.api.openapi import READ, WRITE, created_responses, problems

router = APIRouter(tags=["people"])

#: Namespace of the person ids derived from a request's ``event_id`` (a fixed random UUID).
PERSON_IDS = UUID("5d8f1c52-8b0e-4f4e-9f53-2a6c0b7e1d94")


def new_person_id(ws: str, event_id: str | None) -> str:
    """The id of a person added without one: derived from the request's ``event_id`` when
    it has one, so a re-send (its answer lost) names the same person and is answered as a
    duplicate with that id; it used to get a fresh id, so the re-send was another body under
    the same ``event_id`` (409) and the client never learnt the id. Random otherwise."""
    try:
        return uuid5(PERSON_IDS, f"{ws}/{UUID(event_id)}").hex if event_id else uuid4().hex
    except ValueError:  # not a UUID: the write side refuses it, naming event_id
        return uuid4().hex


@router.post(
    "/v1/workspaces/{ws}/people",
    status_code=201,
    response_model=WriteResult,
    response_model_exclude_none=True,
    responses=created_responses(WRITE),
)
async def add_person(
    ws: WS, person: PersonIn, who: Writer, rt: RT, response: Response
) -> WriteResult:
    """Add a person (``person.added``). Re-sending the same ``event_id`` answers 200 with the
    original ``seq``; a ``person_id`` that is taken is a ``conflict`` (409)."""
    obj = {"type": "person.added", **person.model_dump(exclude_none=True)}
    obj.setdefault("person_id", new_person_id(ws, person.event_id))
    [result] = await rt.bus.command(ws, "people", [obj], who.actor, correlation_id(), who.role)
    if result["status"] < 300:
        result["person_id"] = obj["person_id"]
    return write_answer(result, response)


@router.get("/v1/workspaces/{ws}/people", response_model=PeoplePage, responses=READ)
async def list_people(
    ws: WS,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: pagination.CursorParam = None,
    after: Annotated[
        str | None,
        Query(
            deprecated=True,
            pattern=r"^[A-Za-z0-9_-]{1,64}$",
            description="Deprecated: the person id to start after; use `cursor`.",
        ),
    ] = None,
) -> PeoplePage:
    """The directory in person-id order, a page at a time."""
    if cursor is not None and after is not None:
        raise ApiError(
            422,
            "after: give either cursor or the deprecated after, not both",
            [{"loc": ["query", "after"], "msg": "not with cursor"}],
        )
    start = pagination.decode(cursor, "people", [str])
    if start is not None:
        after = str(start.key[0])
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        rows = await queries.list_people(conn, ws, limit + 1, after)
    nxt = pagination.next_cursor("people", rows, limit, lambda r: (r["person_id"],))
    rows = await rt.decryption.reveal(ws, rows[:limit])
    await rt.audit.record(ws, who, "GET people", [r["person_id"] for r in rows])
    return PeoplePage(
        people=[PersonSummary(**r) for r in rows],
        next=rows[-1]["person_id"] if len(rows) == limit else None,
        next_cursor=nxt,
    )


class DuplicateGroup(BaseModel):
    """People who are likely one person, and why: ``same email``, ``same phone``, ``same
    name`` (after folding case, accents, punctuation and word order), ``similar names``."""

    people: list[PersonSummary]
    reasons: list[str]


class Duplicates(BaseModel):
    groups: list[DuplicateGroup]


@router.get("/v1/workspaces/{ws}/people/duplicates", responses=READ)
async def duplicates(ws: WS, who: Reader, rt: RT, min_seq: MinSeq = None) -> Duplicates:
    """Likely duplicate people in the directory (e.g. one typed in and one from an address
    book), grouped; forgotten people are left out. Reading it reads their personal data, so
    it is in the access log."""
    await rt.waiter.wait(min_seq)
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        async with rt.connections.connection() as conn:
            page = await queries.list_people(conn, ws, 1000, after)
        rows.extend(r for r in page if not r["forgotten"])
        if len(page) < 1000:
            break
        after = page[-1]["person_id"]
    rows = await rt.decryption.reveal(ws, rows)
    groups = duplicate_groups(rows)
    seen = [p["person_id"] for g in groups for p in g["people"]]
    await rt.audit.record(ws, who, "GET people/duplicates", seen)
    return Duplicates(
        groups=[
            DuplicateGroup(people=[PersonSummary(**p) for p in g["people"]], reasons=g["reasons"])
            for g in groups
        ]
    )


@router.get(
    "/v1/workspaces/{ws}/people/{person}",
    response_model=Person,
    responses=READ | problems(404),
)
async def get_person(ws: WS, person: PID, who: Reader, rt: RT, min_seq: MinSeq = None) -> Person:
    """One person; a forgotten one shows only as such."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        row = await queries.get_person(conn, ws, person)
    if row is None:
        raise ApiError(404, f"person: no person {person!r} in this workspace",
                       [{"loc": ["path", "person"], "msg": "not found"}])  # fmt: skip
    await rt.audit.record(ws, who, "GET person", [person])
    return Person(**(await rt.decryption.reveal(ws, [row]))[0])
