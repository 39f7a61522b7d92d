"""Request and response bodies of the API that are not plain event objects."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class PersonIn(BaseModel):
    """A person to add. ``person_id`` is generated when left out."""

    model_config = ConfigDict(extra="forbid")
    person_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    display_name: str
    email: str | None = None
    phone: str | None = None
    organization: str | None = None
    title: str | None = None
    notes: str | None = None
    event_id: str | None = None
    occurred_at: str | None = None


class WriteResult(BaseModel):
    status: int
    event_id: str | None = None
    person_id: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: str | None = None
    errors: list[dict[str, Any]] = []


def single_response(result: dict[str, Any]) -> JSONResponse:
    """A write's result with the status the write-side service decided."""
    return JSONResponse(
        WriteResult(**result).model_dump(exclude_none=True), status_code=result["status"]
    )


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    last_seq: int | None
    results: list[WriteResult]


class TokenIn(BaseModel):
    """A token to create: its role and a name that events record as ``recorded_by``."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["read", "write", "admin"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
