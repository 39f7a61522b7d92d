"""Signed webhooks (admin): register endpoints, list and inspect them, read each one's
delivery log, redeliver a delivery, enable a disabled endpoint, rotate an endpoint's secret,
delete. Deliveries are sent by
the ``webhooks`` process (services/webhooks/app.py) as the Standard Webhooks spec describes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from tieline.plumbing.crypto import MasterKey, master_key_of
from tieline.projections.changelog import KINDS
from tieline.services.api.deps import RT, WS, Admin
from tieline.services.api.errors import ApiError
from tieline.services.api.openapi import AUTH, problems
from tieline.services.webhooks import rotation, store
from tieline.services.webhooks.sender import policy_of
from tieline.services.webhooks.signing import new_secret
from tieline.services.webhooks.ssrf import UrlRefused, check_url

router = APIRouter()

EndpointId = Annotated[str, Path(pattern=r"^ep_[0-9a-f]{16}$", description="Endpoint id")]
DeliveryId = Annotated[str, Path(pattern=r"^msg_[A-Za-z0-9_]{1,64}$", description="Delivery id")]
Kind = Literal["event.recorded", "relationship.changed", "follow_up.due", "person.forgotten"]
ALL_KINDS: tuple[Kind, ...] = (
    "event.recorded",
    "relationship.changed",
    "follow_up.due",
    "person.forgotten",
)
assert set(ALL_KINDS) == set(KINDS)  # the change log's kinds, spelled out for the schema


class EndpointIn(BaseModel):
    """An endpoint to register: where to POST, which kinds (default all)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://crm.example.org/hooks/tieline",
                    "kinds": ["relationship.changed", "person.forgotten"],
                    "description": "CRM sync",
                }
            ]
        },
    )
    url: str = Field(max_length=2000)
    kinds: list[Kind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    description: str | None = Field(default=None, max_length=200)


class Endpoint(BaseModel):
    """A registered endpoint (never its secret). ``disabled_reason`` says why deliveries
    stopped, after too many consecutive failed attempts or a 410 answer."""

    endpoint_id: str
    workspace_id: str
    url: str
    kinds: list[str]
    description: str | None
    created_by: str
    created_at: datetime
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    secret_rotated_at: datetime | None = Field(
        description="When the signing secret was last rotated (null: never)"
    )
    previous_secret_until: datetime | None = Field(
        description="Until when the secret a rotation replaced still signs every attempt, "
        "beside the current one (null: it no longer does)"
    )


class EndpointCreated(Endpoint):
    """The endpoint with its new signing secret: shown here only, never again."""

    secret: str = Field(description="whsec_...: verify webhook-signature with it")


#: How long a rotation may keep the previous secret signing: at most a week.
KEEP_MAX_S = 7 * 24 * 3600


class RotateIn(BaseModel):
    """How the rotation treats the secrets that sign now."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})
    keep_previous_s: StrictInt = Field(
        default=24 * 3600,
        ge=0,
        le=KEEP_MAX_S,
        description="Seconds the replaced secret keeps signing beside the new one (default a "
        "day); 0 stops every other secret at once, for a secret that leaked",
    )
    replace_new: StrictBool = Field(
        default=False,
        description="During a rotation only: replace the new secret (its answer was lost, or "
        "it is not wanted); the old one keeps signing until its time",
    )

    @model_validator(mode="after")
    def _one_way(self) -> RotateIn:
        if self.replace_new and "keep_previous_s" in self.model_fields_set:
            raise ValueError("replace_new keeps the old secret's time; leave keep_previous_s out")
        return self


class Attempt(BaseModel):
    at: datetime
    duration_ms: float | None
    status_code: int | None
    error: str | None
    manual: bool


class Delivery(BaseModel):
    """One message to one endpoint: its id (the ``webhook-id`` header, the same on every
    attempt), state, the body as sent, and every attempt."""

    delivery_id: str
    endpoint_id: str
    position: str
    kind: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    body: str
    attempt_log: list[Attempt]


class DeliveryPage(BaseModel):
    deliveries: list[Delivery]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page")


class EndpointList(BaseModel):
    endpoints: list[Endpoint]


def _master_key(rt: Any) -> MasterKey:
    key = master_key_of(rt.settings)
    if key is None:
        raise ApiError(503, "webhooks need a master key (TIELINE_MASTER_KEY) to seal secrets")
    return key


async def _endpoint_or_404(rt: Any, ws: str, endpoint_id: str) -> dict[str, Any]:
    async with rt.connections.connection() as conn:
        row = await store.endpoint(conn, ws, endpoint_id)
    if row is None:
        raise ApiError(404, "no such webhook endpoint in this workspace")
    return row


@router.post(
    "/v1/workspaces/{ws}/webhooks",
    tags=["webhooks"],
    status_code=201,
    responses=AUTH | problems(503),
)
async def register(ws: WS, body: EndpointIn, who: Admin, rt: RT) -> EndpointCreated:
    """Register an endpoint. The URL must be https (or loopback http where allowed) and may
    not resolve to a private address; the answer carries the signing secret, once."""
    key = _master_key(rt)
    try:
        await check_url(body.url, policy_of(rt.settings))
    except UrlRefused as exc:
        raise ApiError(422, str(exc), [{"loc": ["body", "url"], "msg": str(exc)}]) from exc
    secret = new_secret()
    async with rt.connections.connection() as conn:
        row = await store.create_endpoint(
            conn, ws, body.url, list(body.kinds), body.description, secret, key, who.actor
        )
    return EndpointCreated(**row, secret=secret)


@router.get("/v1/workspaces/{ws}/webhooks", tags=["webhooks"], responses=AUTH)
async def list_endpoints(ws: WS, who: Admin, rt: RT) -> EndpointList:
    async with rt.connections.connection() as conn:
        rows = await store.endpoints(conn, ws)
    return EndpointList(endpoints=[Endpoint(**r) for r in rows])


@router.get(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}", tags=["webhooks"], responses=AUTH | problems(404)
)
async def get_endpoint(ws: WS, endpoint_id: EndpointId, who: Admin, rt: RT) -> Endpoint:
    return Endpoint(**await _endpoint_or_404(rt, ws, endpoint_id))


class Deleted(BaseModel):
    deleted: bool


@router.delete(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}", tags=["webhooks"], responses=AUTH | problems(404)
)
async def delete_endpoint(ws: WS, endpoint_id: EndpointId, who: Admin, rt: RT) -> Deleted:
    """Delete the endpoint with its delivery log; nothing more is sent to it."""
    async with rt.connections.connection() as conn:
        if not await store.delete_endpoint(conn, ws, endpoint_id):
            raise ApiError(404, "no such webhook endpoint in this workspace")
    return Deleted(deleted=True)


@router.post(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}/enable",
    tags=["webhooks"],
    responses=AUTH | problems(404),
)
async def enable(ws: WS, endpoint_id: EndpointId, who: Admin, rt: RT) -> Endpoint:
    """Enable a disabled endpoint (its failure streak starts from zero)."""
    async with rt.connections.connection() as conn:
        row = await store.enable_endpoint(conn, ws, endpoint_id)
    if row is None:
        raise ApiError(404, "no such webhook endpoint in this workspace")
    return Endpoint(**row)


@router.post(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}/rotate-secret",
    tags=["webhooks"],
    responses=AUTH | problems(404, 409, 503),
)
async def rotate_secret(
    ws: WS, endpoint_id: EndpointId, who: Admin, rt: RT, body: RotateIn | None = None
) -> EndpointCreated:
    """Give the endpoint a new signing secret, shown in this answer only. Until
    ``previous_secret_until`` every attempt is signed with the new and the replaced secret
    (``webhook-signature: v1,<new> v1,<old>``), so the receiver accepts either while it
    switches; no delivery is refused for the change. While that lasts another rotation is
    refused (409), unless it replaces only the new secret (``replace_new``) or drops every
    other one (``keep_previous_s`` 0)."""
    key = _master_key(rt)
    asked = body or RotateIn()
    secret = new_secret()
    async with rt.connections.connection() as conn:
        try:
            row = await rotation.rotate_secret(
                conn, ws, endpoint_id, secret, key, asked.keep_previous_s, asked.replace_new
            )
        except rotation.RotationRefused as exc:
            raise ApiError(409, str(exc)) from exc
    if row is None:
        raise ApiError(404, "no such webhook endpoint in this workspace")
    return EndpointCreated(**row, secret=secret)


@router.get(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}/deliveries",
    tags=["webhooks"],
    responses=AUTH | problems(404),
)
async def delivery_log(
    ws: WS,
    endpoint_id: EndpointId,
    who: Admin,
    rt: RT,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$")] = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with every attempt."""
    await _endpoint_or_404(rt, ws, endpoint_id)
    async with rt.connections.connection() as conn:
        rows = await store.deliveries(conn, endpoint_id, status, int(cursor or 0), limit)
    more = len(rows) == limit
    return DeliveryPage(
        deliveries=[Delivery(**r) for r in rows],
        next_cursor=str(rows[-1]["id"]) if more else None,
    )


@router.post(
    "/v1/workspaces/{ws}/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    tags=["webhooks"],
    status_code=202,
    responses=AUTH | problems(404),
)
async def redeliver(
    ws: WS, endpoint_id: EndpointId, delivery_id: DeliveryId, who: Admin, rt: RT
) -> Delivery:
    """Send a delivery again now, with the same webhook-id (so the receiver can tell it is
    the same message), even if the endpoint is disabled; the outcome shows in the log."""
    async with rt.connections.connection() as conn:
        row = await store.redeliver(conn, ws, endpoint_id, delivery_id)
    if row is None:
        raise ApiError(404, "no such delivery of this endpoint")
    row["attempt_log"] = []
    return Delivery(**row)
