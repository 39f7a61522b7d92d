"""Request and response bodies of the API's writes, people, tokens, privacy and operations
routes (the relationship reads are in :mod:`tieline.services.api.read_models`).

Answers are typed for the OpenAPI document and the clients generated from it; the ones read
from the read models allow members beyond those listed (``additionalProperties``), so that a
field added to a read model reaches clients before its description does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from tieline.services.api.errors import ApiError

#: A point in time, written as ``datetime.isoformat()`` writes it (``+00:00``, not ``Z``),
#: as the API always has.
Instant = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(), return_type=str)]
PersonIdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=["ada"])]


class Answer(BaseModel):
    """A read answer: the members listed, plus any a newer read model adds."""

    model_config = ConfigDict(extra="allow")


class Page(Answer):
    """A page of a list: pass ``next_cursor`` as ``?cursor=`` for the next; null at the end."""

    next_cursor: str | None = Field(
        default=None, description="Cursor of the next page; null when this is the last."
    )


# -- writes ---------------------------------------------------------------------------------


class PersonIn(BaseModel):
    """A person to add. ``person_id`` is generated when left out; ``event_id`` makes the
    request idempotent (re-sending it adds nobody new)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "person_id": "ada",
                    "display_name": "Ada Lovelace",
                    "email": "ada@example.org",
                    "event_id": "0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5a01",
                }
            ]
        },
    )
    person_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    display_name: str
    email: str | None = None
    phone: str | None = None
    organization: str | None = None
    title: str | None = None
    notes: str | None = None
    event_id: str | None = Field(
        default=None,
        description="Idempotency key (a UUID); generated when left out.",
        json_schema_extra={"format": "uuid"},
    )
    occurred_at: str | None = Field(
        default=None,
        description="When the person was added (ISO 8601 with a timezone).",
        json_schema_extra={"format": "date-time"},
    )


class WriteResult(BaseModel):
    """A recorded event: 201 when new, 200 when the ``event_id`` was recorded before (then
    ``duplicate`` is true and ``seq`` is the original one). Pass ``seq`` as ``?min_seq=`` to
    a read to see the write."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": 201,
                    "event_id": "0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5a02",
                    "seq": 42,
                    "duplicate": False,
                }
            ]
        }
    )
    status: int = Field(description="201 recorded now, 200 recorded before (a re-send).")
    event_id: str
    person_id: str | None = Field(default=None, description="On POST /people: the person's id.")
    seq: int = Field(description="The event's stream sequence (for ?min_seq=).")
    duplicate: bool = False
    errors: list[dict[str, Any]] = Field(
        default_factory=list,
        deprecated=True,
        description="Always empty (a refused write is a problem document); kept for clients "
        "of the first release.",
    )


class LineResult(BaseModel):
    """The outcome of one line of a batch. Not a problem document: a batch answers 200 with
    one of these per non-blank line; ``status`` is what that line alone would have got (201,
    200 for a re-send, or the 4xx of its refusal, with ``error`` naming the field at fault and
    ``errors`` each field)."""

    status: int
    event_id: str | None = None
    person_id: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: str | None = Field(default=None, description="Why the line was refused.")
    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="Each field at fault: `{loc, msg}`."
    )


class BatchResult(BaseModel):
    """Per-line outcomes of a batch, in line order (blank lines skipped)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": 1,
                    "rejected": 1,
                    "last_seq": 43,
                    "results": [
                        {"status": 201, "event_id": "0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5a03",
                         "seq": 43, "duplicate": False},
                        {"status": 422, "error": "line 2: not valid JSON (Expecting value)",
                         "errors": [{"loc": ["line", "2"], "msg": "not valid JSON"}]},
                    ],
                }
            ]
        }
    )  # fmt: skip
    accepted: int
    rejected: int
    last_seq: int | None = Field(description="Highest seq recorded; pass it as ?min_seq=.")
    results: list[LineResult]


def write_answer(result: dict[str, Any], response: Response) -> WriteResult:
    """A write's result as the write-side service decided it: the answer on success (its
    status set on ``response``), a problem document (raised) on a refusal."""
    status = int(result["status"])
    if status >= 300:
        raise ApiError(
            status,
            str(result.get("error") or f"refused with status {status}"),
            result.get("errors") or [],
            extra={"event_id": result.get("event_id")},
        )
    response.status_code = status
    return WriteResult(**{k: v for k, v in result.items() if k != "error"})


# -- people ---------------------------------------------------------------------------------


class PersonSummary(Answer):
    """A person in the directory. A forgotten person shows only as such: ``display_name``
    ``[forgotten]``, every other personal field null."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "person_id": "ada",
                    "display_name": "Ada Lovelace",
                    "email": "ada@example.org",
                    "phone": None,
                    "organization": None,
                    "title": None,
                    "added_at": "2026-03-14T18:30:00+00:00",
                    "updated_at": "2026-03-14T18:30:00+00:00",
                    "forgotten": False,
                }
            ]
        }
    )
    person_id: str
    display_name: str | None
    email: str | None = None
    phone: str | None = None
    organization: str | None = None
    title: str | None = None
    added_at: Instant
    updated_at: Instant | None = None
    forgotten: bool


class Person(PersonSummary):
    """One person, with their notes; ``merged_into`` names the survivor when this person was
    merged into another (``person.merged``; the directory lists only the survivor)."""

    notes: str | None = None
    merged_into: str | None = None


class PeoplePage(Page):
    """A page of the directory in person-id order."""

    people: list[PersonSummary]
    next: str | None = Field(
        default=None,
        deprecated=True,
        description="Deprecated: the last person id of a full page (for ?after=); use next_cursor.",
    )


# -- privacy and tokens ---------------------------------------------------------------------


class TokenIn(BaseModel):
    """A token to create: its role and a name that events record as ``recorded_by``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "write", "name": "web-app"}]}
    )
    role: Literal["read", "write", "admin"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")


class TokenCreated(BaseModel):
    """A new token. ``token`` is the only time the secret is shown: store it now."""

    token: str
    token_id: str
    role: Literal["read", "write", "admin"]
    name: str


class TokenInfo(Answer):
    token_id: str
    workspace_id: str
    role: str
    name: str
    created_at: Instant
    revoked_at: Instant | None = None


class TokensPage(Page):
    """The workspace's tokens (revoked ones too), oldest first; never their secrets."""

    tokens: list[TokenInfo]


class Revoked(BaseModel):
    """Whether this call revoked the token (false: it was revoked already)."""

    revoked: bool


class AccessEntry(Answer):
    at: Instant
    actor: str
    endpoint: str
    person_ids: list[str]


class AccessLogPage(Page):
    """Who read whose personal data, newest first."""

    entries: list[AccessEntry]


class ErasureRemoved(Answer):
    key: str
    people_v1: str
    archived_events_now_unreadable: int


class ErasureSearch(Answer):
    values_searched: int
    stream_messages_scanned: int = Field(description="The workspace's messages on the stream.")
    stream_messages_with_plaintext: int
    table_rows_with_plaintext: dict[str, int] = Field(
        description="The workspace's rows still holding a former value, per `schema.table` "
        "(other workspaces' rows are never searched)."
    )
    tables_not_searched: list[str] = Field(
        default_factory=list,
        description="Tables whose rows belong to no workspace (checkpoints, generations, "
        "migration state): not searched, as no row of them is this workspace's.",
    )


class ErasureReport(Answer):
    """What forgetting removed, and a search for the person's former values afterwards:
    ``clean`` is true when the stream and every table hold none of them."""

    person_id: str
    erased: bool
    forgotten_event_id: str
    forgotten_seq: int
    merged_people_forgotten: list[str] = Field(
        default_factory=list,
        description="The people merged into this one (duplicates of the same human), erased "
        "with it in the same command; their former values are searched too.",
    )
    removed: ErasureRemoved
    search: ErasureSearch
    clean: bool


# -- operations -----------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class ProjectionCheck(Answer):
    stream_seq: int
    checkpoint: int
    lag: int
    generation: int


class ReadinessChecks(Answer):
    nats: str = Field(description="`ok`, or why NATS is unavailable.")
    postgres: str = Field(description="`ok`, or why PostgreSQL is unavailable.")
    projection: ProjectionCheck | None = None
    self_check: dict[str, Any] | None = Field(
        default=None,
        description="The live projection's last self-check (null before its first round): "
        "when, what it sampled, `ok`, and `problem_count`. The differences themselves name "
        "workspaces and people, so they are not shown here (this route has no token): they "
        "are in the worker's `selfcheck.ALARM` log line and in `tieline verify`.",
    )
    sync: dict[str, int] | None = Field(
        default=None,
        description="Calendar/address-book sync sources: how many, and how many failing "
        "(their errors are at /v1/workspaces/{ws}/sync-sources). Never fails the check.",
    )


class Readiness(BaseModel):
    """Ready: NATS and PostgreSQL answer (and, with ``?max_lag=``, the projection lags the
    log by at most that many events). When not, the answer is a ``not-ready`` problem (503)
    with the same ``ready`` and ``checks`` members."""

    ready: bool
    checks: ReadinessChecks
